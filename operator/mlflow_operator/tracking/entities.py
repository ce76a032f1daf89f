"""What the operator knows about an MLflow server and its entities, without MLflow's types.

The gateway (gateways/mlflow.py) turns MLflow client objects into these snapshots and MLflow
exceptions into these errors, so the reconcile logic can be tested with plain values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlflow_operator.logic.reasons import Reason
from mlflow_operator.tracking.servers import Credentials


@dataclass(frozen=True)
class TrackingTarget:
    """One MLflow server and the credentials to use with it."""

    uri: str
    credentials: Credentials = Credentials()
    # Base URL for links in status; the tracking URI when unset.
    ui_url: str | None = None
    # The MLflow workspace every request names (X-MLFLOW-WORKSPACE): the object's namespace
    # on a workspace server, None on a server without workspaces.
    workspace: str | None = None

    @property
    def ui(self) -> str:
        return (self.ui_url or self.uri).rstrip("/")

    def experiment_url(self, experiment_id: str) -> str:
        return f"{self.ui}/#/experiments/{experiment_id}"

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_url(self, name: str) -> str:
        return f"{self.ui}/#/models/{name}"


# --------------------------------------------------------------------------- errors


class TrackingError(Exception):
    """An MLflow call failed. `reason` is the condition reason to show for it."""

    reason: str = Reason.TRACKING_ERROR


class TrackingUnavailable(TrackingError):
    """The server could not be reached, timed out, or failed (5xx): try again later."""

    reason: str = Reason.TRACKING_UNAVAILABLE


class TrackingStalled(TrackingUnavailable):
    """The server has answered nothing for a while and its connections are all taken: the
    call was not made. The object waits for its next periodic check, not in kopf's retry
    queue, whose workers every namespace shares."""


class TrackingUnauthorized(TrackingError):
    """The server refused the credentials (401/403)."""

    reason: str = Reason.TRACKING_UNAUTHORIZED


class TrackingRejected(TrackingError):
    """The server refused the request (another 4xx) or answered something that is not
    MLflow's API: sending the same request again will not help."""

    reason: str = Reason.TRACKING_REJECTED


class InvalidResponse(TrackingRejected):
    """The server answered 200 with JSON that is not in the shape of MLflow's API."""

    reason: str = Reason.INVALID_RESPONSE


class NotFound(TrackingError):
    reason: str = Reason.NOT_FOUND


class AlreadyExists(TrackingError):
    reason: str = Reason.ALREADY_EXISTS


class InvalidRequest(TrackingError):
    """MLflow rejected the request as invalid (400): retrying the same request will not help."""

    reason: str = Reason.INVALID_REQUEST


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class ExperimentInfo:
    experiment_id: str
    name: str
    lifecycle_stage: str
    artifact_location: str | None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def deleted(self) -> bool:
        return self.lifecycle_stage == "deleted"


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    experiment_id: str
    run_name: str | None
    status: str
    lifecycle_stage: str
    start_time: int | None
    end_time: int | None
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class LoggedModelInfo:
    model_id: str
    name: str
    source_run_id: str | None
    status: str
    creation_timestamp: int | None


@dataclass(frozen=True)
class ModelVersionInfo:
    name: str
    version: str
    stage: str
    description: str
    source: str | None
    run_id: str | None
    status: str
    aliases: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    # By the server's clock, in ms: a create, a stage transition or a description change
    # moves it; a tag or alias change does not (MLflow's SQL store).
    last_updated: int | None = None


@dataclass(frozen=True)
class RegisteredModelInfo:
    name: str
    description: str
    tags: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    # By the server's clock, in ms: moves when a version is created, deleted or moved to
    # another stage, and with the model's description; not with tags or aliases.
    last_updated: int | None = None
