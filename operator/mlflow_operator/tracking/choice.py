"""Which MLflow server and credentials an object uses: pure decisions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_operator.api.common import TrackingSpec
from mlflow_operator.logic.conditions import ReconcileProblem, progressing, stalled
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.tracking.servers import Credentials, uri_problem

CREDENTIALS_LABEL = "mlflow.operator.dev/credentials"


@dataclass(frozen=True)
class TargetChoice:
    uri: str
    # Secret (in the object's namespace) to read credentials from, if any.
    secret_name: str | None
    # Whether the operator's own credentials apply (default server, no Secret named).
    use_operator_credentials: bool
    # A server with MLflow workspaces and Kubernetes authorization: the operator sends its
    # ServiceAccount token and the namespace's workspace; training pods their own token.
    workspaces: bool = False


def choose_target(tracking: TrackingSpec | None, config: OperatorConfig) -> TargetChoice:
    uri = (tracking.uri if tracking and tracking.uri else config.default_tracking_uri) or None
    if not uri:
        raise ReconcileProblem(stalled(
            Reason.TRACKING_NOT_CONFIGURED,
            "no spec.tracking.uri and the operator has no default tracking server "
            "(flag --tracking-uri, Helm value tracking.uri)",
        ))
    uri = uri.rstrip("/")
    problem = uri_problem(uri)
    if problem:
        raise ReconcileProblem(stalled(Reason.INVALID_SPEC, problem))
    if not config.allowlist.allows(uri):
        raise ReconcileProblem(stalled(
            Reason.TRACKING_SERVER_NOT_ALLOWED,
            f"tracking server {uri!r} is not in the operator's allowlist, so nothing is sent to it; "
            "ask the operator's administrators to add it (Helm value tracking.allowedServers, "
            "flag --allowed-tracking-server) or use an allowed server",
        ))
    is_default = uri == config.default_tracking_uri
    if config.allowlist.uses_workspaces(uri):
        if tracking and tracking.secret_ref:
            raise ReconcileProblem(stalled(
                Reason.INVALID_SPEC,
                f"tracking server {uri!r} authorizes with Kubernetes RBAC (MLflow workspaces): the operator uses its "
                "own ServiceAccount and training pods theirs, so no credentials Secret is used; remove "
                "spec.tracking.secretRef",
            ))
        return TargetChoice(uri, None, False, workspaces=True)
    if tracking and tracking.secret_ref:
        return TargetChoice(uri, tracking.secret_ref.name, False)
    if is_default and config.default_tracking_secret:
        return TargetChoice(uri, config.default_tracking_secret, False)
    # Never send the operator's own credentials to a server the object chose.
    return TargetChoice(uri, None, is_default)


def credentials_from_secret(namespace: str, name: str, data: dict[str, str] | None,
                            opted_in: bool = True) -> Credentials:
    """Credentials from a Secret's data: `token`, or `username` and `password`. Only a Secret
    its owner labelled for the operator is used."""
    if data is None:
        raise ReconcileProblem(progressing(
            Reason.SECRET_NOT_FOUND,
            f"Secret {name!r} not found in namespace {namespace!r}: create it with keys "
            f"username and password (basic auth) or token (bearer), labelled {CREDENTIALS_LABEL}=true",
        ))
    if not opted_in:
        raise ReconcileProblem(stalled(
            Reason.SECRET_NOT_ALLOWED,
            f"Secret {name!r} is not labelled {CREDENTIALS_LABEL}=true, so the operator does not use it; "
            f"if it holds MLflow credentials meant for this server, label it: "
            f"kubectl label secret {name} -n {namespace} {CREDENTIALS_LABEL}=true",
        ))
    token = (data.get("token") or "").strip()
    username = (data.get("username") or "").strip()
    password = data.get("password") or ""
    if token:
        return Credentials(token=token)
    if username and password:
        return Credentials(username=username, password=password)
    present = ", ".join(sorted(data)) or "none"
    raise ReconcileProblem(progressing(
        Reason.INVALID_SECRET,
        f"Secret {name!r} must have keys username and password, or token (keys present: {present})",
    ))


def check_pinned(pinned_uri: str | None, uri: str, what: str) -> None:
    """An object stays on the server its MLflow entity lives on: the same id or name on
    another server is another entity, so the operator never silently re-binds to it."""
    if pinned_uri and pinned_uri.rstrip("/") != uri.rstrip("/"):
        raise ReconcileProblem(stalled(
            Reason.TRACKING_SERVER_CHANGED,
            f"{what} lives on {pinned_uri!r}, but the tracking server is now {uri!r}; the operator does not "
            "move entities between servers: set spec.tracking.uri back, or create a new object for the new server",
        ))
