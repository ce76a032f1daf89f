"""Operator-wide settings: command-line flags with environment-variable fallbacks.

Every flag has an `MLFLOW_OPERATOR_*` variable so the Helm chart can set them from values.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_operator.logic.signing import KeyRing
from mlflow_operator.tracking.servers import Allowlist, Credentials, TokenFile, uri_problem

SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
# The chart's ClusterRole with the MLflow verbs a training pod needs on a workspace server.
DEFAULT_TRAINING_CLUSTER_ROLE = "mlflow-operator-training"


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...] = ()
    all_namespaces: bool = True
    # Tracking server used by objects without `spec.tracking.uri`.
    default_tracking_uri: str | None = None
    # Servers objects may name in spec.tracking.uri besides the default one; nothing is
    # ever sent to any other server.
    allowed_tracking_servers: tuple[str, ...] = ()
    # Servers that run MLflow workspaces with Kubernetes authorization (allowed too): the
    # operator acts for namespace X only in workspace X, with its own ServiceAccount token,
    # and training pods log as their ServiceAccount (decision 0025).
    workspace_tracking_servers: tuple[str, ...] = ()
    # The operator's bearer token for the workspace servers.
    workspace_token: TokenFile = field(default_factory=lambda: TokenFile(SERVICE_ACCOUNT_TOKEN), compare=False)
    # What a namespace binds to a training pod's ServiceAccount (named in conditions).
    training_cluster_role: str = DEFAULT_TRAINING_CLUSTER_ROLE
    # Credentials the operator itself uses for the default server (from its own environment).
    default_credentials: Credentials = Credentials()
    # Name of a Secret, looked up in each object's own namespace, that TrainingRun Jobs
    # and the operator use for the default server when `spec.tracking.secretRef` is not set.
    default_tracking_secret: str | None = None
    # Base URL of the MLflow UI for status links; defaults to the tracking URI.
    ui_url: str | None = None
    drift_interval: float = 60.0
    mlflow_timeout: float = 10.0
    mlflow_max_retries: int = 2
    mlflow_concurrency: int = 8
    kubernetes_concurrency: int = 16
    # Watch the Secrets labelled for the operator (needs list/watch on Secrets) instead of
    # reading a Secret on every reconcile and drift check.
    watch_credentials: bool = True
    health_port: int = 8081
    metrics_port: int = 8080
    bind_address: str = "0.0.0.0"
    # Written every few seconds for exec probes (`mlflow-operator probe`); None: not written.
    heartbeat_file: str | None = None
    # kopf peering name for more than one replica; None runs standalone.
    peering: str | None = None
    peering_priority: int | None = None
    log_format: str = "plain"
    verbose: bool = False
    # The keys that sign ownership tags (logic/signing.py); empty: nothing can be created.
    ownership_keys: KeyRing = field(default_factory=KeyRing, repr=False)
    allowlist: Allowlist = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowlist", Allowlist.of(
            self.default_tracking_uri, self.allowed_tracking_servers, self.workspace_tracking_servers))


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(f"MLFLOW_OPERATOR_{name}")
    return value if value not in (None, "") else default


def _number(kind: type, minimum: float, maximum: float | None = None):
    """An argparse type: a number in range, with a message that says which range."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
            raise argparse.ArgumentTypeError(f"{text} must be {bound}")
        return value

    return parse


_POSITIVE_SECONDS = _number(float, 0.001)
_PORT = _number(int, 0, 65535)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", dest="namespaces", default=None,
        help="watch this namespace (repeatable); env MLFLOW_OPERATOR_NAMESPACES (comma-separated)",
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", default=None,
        help="watch every namespace (the default when no namespace is given)",
    )
    parser.add_argument(
        "--tracking-uri", default=_env("TRACKING_URI"),
        help="default MLflow tracking server (http/https); env MLFLOW_OPERATOR_TRACKING_URI",
    )
    parser.add_argument(
        "--allowed-tracking-server", action="append", dest="allowed_tracking_servers", default=None,
        metavar="URI",
        help="an MLflow server objects may name in spec.tracking.uri (repeatable; scheme, host and port "
        "are compared; the default server is always allowed); env MLFLOW_OPERATOR_ALLOWED_TRACKING_SERVERS "
        "(comma-separated)",
    )
    parser.add_argument(
        "--workspace-tracking-server", action="append", dest="workspace_tracking_servers", default=None,
        metavar="URI",
        help="an MLflow server that runs workspaces with Kubernetes authorization (mlflow-kubernetes-plugins; "
        "repeatable, allowed like --allowed-tracking-server; may be the --tracking-uri): the operator works in "
        "each object's namespace's workspace with its ServiceAccount token, and training pods log as their "
        "ServiceAccount; env MLFLOW_OPERATOR_WORKSPACE_TRACKING_SERVERS (comma-separated)",
    )
    parser.add_argument(
        "--workspace-token-file", default=_env("WORKSPACE_TOKEN_FILE", str(SERVICE_ACCOUNT_TOKEN)),
        help="the operator's bearer token for workspace servers, read again every minute "
        f"(default {SERVICE_ACCOUNT_TOKEN}); env MLFLOW_OPERATOR_WORKSPACE_TOKEN_FILE",
    )
    parser.add_argument(
        "--training-cluster-role", default=_env("TRAINING_CLUSTER_ROLE", DEFAULT_TRAINING_CLUSTER_ROLE),
        help="the ClusterRole a namespace binds to its training ServiceAccounts for workspace servers, named in "
        f"conditions (default {DEFAULT_TRAINING_CLUSTER_ROLE}); env MLFLOW_OPERATOR_TRAINING_CLUSTER_ROLE",
    )
    parser.add_argument(
        "--tracking-secret-name", default=_env("TRACKING_SECRET_NAME"),
        help="Secret (in each object's namespace) with credentials for the default server; "
        "env MLFLOW_OPERATOR_TRACKING_SECRET_NAME",
    )
    parser.add_argument(
        "--ui-url", default=_env("UI_URL"),
        help="base URL of the MLflow UI for status links (default: the tracking URI)",
    )
    parser.add_argument(
        "--drift-interval", type=_POSITIVE_SECONDS, default=_env("DRIFT_INTERVAL", "60"),
        help="seconds between drift checks against MLflow (default 60)",
    )
    parser.add_argument(
        "--mlflow-timeout", type=_number(float, 1), default=_env("MLFLOW_TIMEOUT", "10"),
        help="seconds before one MLflow request times out (default 10)",
    )
    parser.add_argument(
        "--mlflow-max-retries", type=_number(int, 0, 10), default=_env("MLFLOW_MAX_RETRIES", "2"),
        help="retries of one MLflow request on connection errors and 5xx (default 2)",
    )
    parser.add_argument(
        "--mlflow-concurrency", type=_number(int, 1, 64), default=_env("MLFLOW_CONCURRENCY", "8"),
        help="MLflow requests in flight at once (default 8)",
    )
    parser.add_argument(
        "--kubernetes-concurrency", type=_number(int, 1, 128), default=_env("KUBERNETES_CONCURRENCY", "16"),
        help="Kubernetes API requests of the operator's own client in flight at once (default 16)",
    )
    parser.add_argument(
        "--credentials-watch", action=argparse.BooleanOptionalAction,
        default=_env("CREDENTIALS_WATCH", "true") == "true",
        help="watch the Secrets labelled mlflow.operator.dev/credentials=true (needs list and watch on "
             "Secrets) instead of reading the Secret on each reconcile (default: watch)",
    )
    parser.add_argument(
        "--health-port", type=_PORT, default=_env("HEALTH_PORT", "8081"),
        help="port of the /healthz liveness and readiness endpoint (default 8081; 0 disables it)",
    )
    parser.add_argument(
        "--heartbeat-file", default=_env("HEARTBEAT_FILE"),
        help="file the operator rewrites every few seconds, for exec probes (`mlflow-operator probe`)",
    )
    parser.add_argument(
        "--metrics-port", type=_PORT, default=_env("METRICS_PORT", "8080"),
        help="port of the Prometheus /metrics endpoint (default 8080; 0 disables it)",
    )
    parser.add_argument(
        "--bind-address", default=_env("BIND_ADDRESS", "0.0.0.0"),
        help="address the health and metrics endpoints listen on (default 0.0.0.0)",
    )
    parser.add_argument(
        "--peering", default=_env("PEERING"),
        help="kopf peering name, so that only one of several replicas is active "
        "(needs the KopfPeering CRDs); unset runs standalone",
    )
    parser.add_argument(
        "--peering-priority", type=int, default=None,
        help="this replica's peering priority (default: derived from the pod name, so replicas differ)",
    )
    parser.add_argument(
        "--log-format", choices=("plain", "json"), default=_env("LOG_FORMAT", "plain"),
        help="log line format (default plain)",
    )
    parser.add_argument(
        "--ownership-keys", default=_env("OWNERSHIP_KEYS"), required=_env("OWNERSHIP_KEYS") is None,
        help="directory of the keys that sign ownership tags (one file per key, at least 32 bytes; the name "
        "sorting last signs, all verify): a Secret only the operator can read; env MLFLOW_OPERATOR_OWNERSHIP_KEYS",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> OperatorConfig:
    environ = dict(os.environ if environ is None else environ)
    namespaces: list[str] = list(args.namespaces or [])
    if not namespaces and not args.all_namespaces:
        namespaces = [n.strip() for n in (environ.get("MLFLOW_OPERATOR_NAMESPACES") or "").split(",") if n.strip()]
    allowed: list[str] = list(args.allowed_tracking_servers or [])
    if not allowed:
        allowed = [u.strip() for u in (environ.get("MLFLOW_OPERATOR_ALLOWED_TRACKING_SERVERS") or "").split(",")
                   if u.strip()]
    workspace_servers: list[str] = list(args.workspace_tracking_servers or [])
    if not workspace_servers:
        workspace_servers = [u.strip() for u in
                             (environ.get("MLFLOW_OPERATOR_WORKSPACE_TRACKING_SERVERS") or "").split(",") if u.strip()]
    checked = [("--tracking-uri", args.tracking_uri), ("--ui-url", args.ui_url)]
    checked += [("--allowed-tracking-server", uri) for uri in allowed]
    checked += [("--workspace-tracking-server", uri) for uri in workspace_servers]
    for flag, uri in checked:
        problem = uri and uri_problem(uri)
        if problem:
            raise SystemExit(f"{flag}: {problem}")
    try:
        keys = KeyRing.from_directory(Path(args.ownership_keys))
    except (OSError, ValueError) as error:
        raise SystemExit(f"--ownership-keys: {error}") from None
    return OperatorConfig(
        namespaces=tuple(namespaces),
        all_namespaces=not namespaces,
        default_tracking_uri=(args.tracking_uri or None) and args.tracking_uri.rstrip("/"),
        allowed_tracking_servers=tuple(uri.rstrip("/") for uri in allowed),
        workspace_tracking_servers=tuple(uri.rstrip("/") for uri in workspace_servers),
        workspace_token=TokenFile(Path(args.workspace_token_file)),
        training_cluster_role=args.training_cluster_role,
        default_credentials=Credentials(
            username=environ.get("MLFLOW_TRACKING_USERNAME") or None,
            password=environ.get("MLFLOW_TRACKING_PASSWORD") or None,
            token=environ.get("MLFLOW_TRACKING_TOKEN") or None,
        ),
        default_tracking_secret=args.tracking_secret_name or None,
        ui_url=(args.ui_url or None) and args.ui_url.rstrip("/"),
        drift_interval=args.drift_interval,
        mlflow_timeout=args.mlflow_timeout,
        mlflow_max_retries=args.mlflow_max_retries,
        mlflow_concurrency=args.mlflow_concurrency,
        kubernetes_concurrency=args.kubernetes_concurrency,
        watch_credentials=args.credentials_watch,
        health_port=args.health_port,
        metrics_port=args.metrics_port,
        bind_address=args.bind_address,
        heartbeat_file=args.heartbeat_file or None,
        peering=args.peering or None,
        peering_priority=args.peering_priority,
        log_format=args.log_format,
        verbose=args.verbose,
        ownership_keys=keys,
    )
