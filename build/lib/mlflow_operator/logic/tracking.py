"""Which MLflow server and credentials an object uses: pure decisions, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_operator.api.common import TrackingSpec
from mlflow_operator.config import Credentials, OperatorConfig
from mlflow_operator.logic.conditions import ReconcileProblem, progressing, stalled
from mlflow_operator.tracking import uri_problem


@dataclass(frozen=True)
class TargetChoice:
    uri: str
    # Secret (in the object's namespace) to read credentials from, if any.
    secret_name: str | None
    # Whether the operator's own credentials apply (default server, no Secret named).
    use_operator_credentials: bool


def choose_target(tracking: TrackingSpec | None, config: OperatorConfig) -> TargetChoice:
    uri = (tracking.uri if tracking and tracking.uri else config.default_tracking_uri) or None
    if not uri:
        raise ReconcileProblem(stalled(
            "TrackingNotConfigured",
            "no spec.tracking.uri and the operator has no default tracking server "
            "(flag --tracking-uri, Helm value tracking.uri)",
        ))
    uri = uri.rstrip("/")
    problem = uri_problem(uri)
    if problem:
        raise ReconcileProblem(stalled("InvalidSpec", problem))
    is_default = uri == config.default_tracking_uri
    if tracking and tracking.secret_ref:
        return TargetChoice(uri, tracking.secret_ref.name, False)
    if is_default and config.default_tracking_secret:
        return TargetChoice(uri, config.default_tracking_secret, False)
    # Never send the operator's own credentials to a server the object chose.
    return TargetChoice(uri, None, is_default)


def credentials_from_secret(namespace: str, name: str, data: dict[str, str] | None) -> Credentials:
    """Credentials from a Secret's data: `token`, or `username` and `password`."""
    if data is None:
        raise ReconcileProblem(progressing(
            "SecretNotFound",
            f"Secret {name!r} not found in namespace {namespace!r}: create it with keys "
            "username and password (basic auth) or token (bearer)",
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
        "InvalidSecret",
        f"Secret {name!r} must have keys username and password, or token (keys present: {present})",
    ))
