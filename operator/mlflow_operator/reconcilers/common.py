"""Async steps shared by the reconcilers of every kind."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Literal, Mapping, TypeVar

from pydantic import ValidationError

from mlflow_operator.api.common import TAG_KIND, TAG_NAME, TAG_UID, ObjectIdentity, Status, TrackedStatus, TrackingSpec
from mlflow_operator.caches import Caches
from mlflow_operator.gateways.kubernetes import KubernetesError
from mlflow_operator.gateways.protocols import KubernetesApi, MlflowApi
from mlflow_operator.logic import ownership, signing
from mlflow_operator.logic.conditions import ReconcileProblem, progressing, stalled
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.scheduling.policy import Dispatcher
from mlflow_operator.tracking.choice import choose_target, credentials_from_secret
from mlflow_operator.tracking.entities import (
    ExperimentInfo,
    RegisteredModelInfo,
    TrackingError,
    TrackingTarget,
)
from mlflow_operator.tracking.servers import Credentials

SpecT = TypeVar("SpecT")
StatusT = TypeVar("StatusT", bound=Status)


def parse_status(status_type: type[StatusT], raw_status: Any) -> StatusT:
    """The typed status of a read. The API server checks status against the CRD's schema, so
    only a status written by hand past it (or by a future operator) can fail here."""
    try:
        return status_type.model_validate(dict(raw_status or {}))
    except ValidationError as error:
        raise ReconcileProblem(stalled(Reason.INVALID_STATUS, f"status cannot be read: {error}")) from None


def parse_spec(parse: Callable[[Any], SpecT], raw_spec: Any) -> SpecT:
    """A spec the API server let through but the operator cannot use is Stalled
    (InvalidSpec), for every kind and on every path, delete included."""
    try:
        return parse(raw_spec)
    except ValueError as error:
        raise ReconcileProblem(stalled(Reason.INVALID_SPEC, f"invalid spec: {error}")) from None

@dataclass(frozen=True)
class Services:
    """What a reconciler may use: configuration, the two gateways, the caches that spare
    them reads, and the dispatcher that schedules steps when the operator is busy."""

    config: OperatorConfig
    mlflow: MlflowApi
    kube: KubernetesApi
    caches: Caches = field(default_factory=Caches)
    dispatcher: Dispatcher = field(default_factory=Dispatcher)


class StatusWriter:
    """Writes an object's status with its resourceVersion as precondition: a reconcile that
    decided on a stale read (another replica, an older event) gets 409 instead of landing."""

    def __init__(self, kube: KubernetesApi, plural: str, namespace: str, name: str,
                 resource_version: str | None, on_write: Callable[[dict[str, Any]], None] | None = None) -> None:
        self._kube, self._plural, self._namespace, self._name = kube, plural, namespace, name
        self.resource_version = resource_version
        self._on_write = on_write

    async def write(self, fields: dict[str, Any]) -> None:
        written = await self._kube.patch_status(
            self._plural, self._namespace, self._name, fields, resource_version=self.resource_version
        )
        self.resource_version = written["metadata"]["resourceVersion"]
        if self._on_write:
            self._on_write(written)


# --------------------------------------------------------------------------- the reconcile contract

Event = tuple[str, str, str]  # (type, reason, message)
# How a step posts an Event: Context.event.
EventSink = Callable[[str, str, str], None]

# The status writes a reconcile makes before its end, each where a crash right after the
# step that follows would lose what no later reconcile can find again:
#   parent-run   a sweep's parent run, before any trial names it;
#   job-outcome  a Job's outcome, before its finalizer lets it go (or when it was lost);
#   run-closed   a closed run's final status, before the model is registered.
Checkpoint = Literal["parent-run", "job-outcome", "run-closed"]


@dataclass
class Context(Generic[SpecT, StatusT]):
    """Everything a reconcile of one object may use, for every kind: built by the handlers
    from a fresh read, with the spec already parsed (an unusable spec never gets here).

    Status has one way in: steps `record` fields as they learn them, and the handlers write
    them with the outcome in one status write; `checkpoint` writes them earlier, only at the
    named points. Events have one way out: `event`, posted after that write (also when a
    later step fails: they say what was done)."""

    services: Services
    identity: ObjectIdentity
    spec: SpecT
    # The status as read, with what steps recorded since (typed; `stored` is the raw read).
    status: StatusT
    writer: StatusWriter
    # A periodic check (drift pass, live metrics) rather than a change.
    drift_check: bool = False
    # metadata.creationTimestamp.
    created_at: dt.datetime | None = None
    # The object's metadata as read (generation, annotations, labels: who made a change).
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # Deleting: credentials remembered from a Secret that is gone may be used.
    cleanup: bool = False
    # Events of steps done, posted after the status write.
    events: list[Event] = field(default_factory=list)
    # Status fields recorded by steps done and not written yet (a JSON merge patch).
    recorded: dict[str, Any] = field(default_factory=dict)
    # The status as stored in the API server: as read, plus what checkpoints wrote.
    stored: dict[str, Any] = field(default_factory=dict)
    # The checkpoints written, in order (what a crash test looks for).
    checkpoints: list[Checkpoint] = field(default_factory=list)

    def record(self, fields: StatusT) -> None:
        """Status fields of a step done (those `fields` was built with), written with the
        outcome (or an earlier checkpoint) whatever happens next."""
        self.recorded.update(fields.as_patch())
        self.status = type(self.status).model_validate({**self.stored, **self.recorded})

    async def checkpoint(self, name: Checkpoint) -> None:
        """Write what was recorded now, before the next step depends on it being stored."""
        if self.recorded:
            await self.writer.write(dict(self.recorded))
            self.stored = {**self.stored, **self.recorded}
            self.recorded.clear()
        self.checkpoints.append(name)

    def event(self, type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason, message))


async def resolve_target(services: Services, namespace: str, tracking: TrackingSpec | None,
                         cleanup: bool = False) -> TrackingTarget:
    """The server and credentials for an object; Secrets only from the object's namespace."""
    target, _ = await resolve_target_and_secret(services, namespace, tracking, cleanup=cleanup)
    return target


async def resolve_target_and_secret(
    services: Services, namespace: str, tracking: TrackingSpec | None, cleanup: bool = False
) -> tuple[TrackingTarget, str | None]:
    """Like resolve_target, and also the name of the Secret the credentials came from.

    The allowlist is checked before any Secret is read, so credentials only ever go to an
    allowed server. With `cleanup` (an object being deleted), a Secret that is gone is
    replaced by the credentials remembered from it, if any."""
    choice = choose_target(tracking, services.config)
    ui_url = services.config.ui_url if choice.uri == services.config.default_tracking_uri else None
    if choice.workspaces:
        try:
            token = services.config.workspace_token.read()
        except (OSError, ValueError):
            raise ReconcileProblem(progressing(
                Reason.OPERATOR_TOKEN_UNREADABLE,
                f"the operator cannot read its ServiceAccount token ({services.config.workspace_token.path}) "
                f"for the workspace server {choice.uri!r}",
            )) from None
        return TrackingTarget(uri=choice.uri, credentials=Credentials(token=token), ui_url=ui_url,
                              workspace=namespace), None
    if choice.secret_name:
        key = (namespace, choice.secret_name, choice.uri)
        try:
            secret = await services.caches.watched.credentials_secret(services.kube, namespace, choice.secret_name)
        except KubernetesError as error:
            raise ReconcileProblem(progressing(
                Reason.SECRET_UNREADABLE, f"cannot read Secret {choice.secret_name!r}: {error.message}"
            )) from None
        remembered = services.caches.remembered.recall(key) if cleanup and secret is None else None
        if remembered is not None:
            credentials = remembered
        elif cleanup and secret is None:
            # Deleting, e.g. with the whole namespace: the Secret will not come back.
            raise ReconcileProblem(stalled(
                Reason.SECRET_NOT_FOUND, f"Secret {choice.secret_name!r} is gone and the operator has not read it since "
                "it started, so it cannot authenticate to close the MLflow entity",
            ))
        else:
            credentials = credentials_from_secret(
                namespace, choice.secret_name, None if secret is None else secret.data,
                opted_in=secret is None or secret.opted_in,
            )
            services.caches.remembered.remember(key, credentials)
    elif choice.use_operator_credentials:
        credentials = services.config.default_credentials
    else:
        credentials = TrackingTarget(choice.uri).credentials
    return TrackingTarget(uri=choice.uri, credentials=credentials, ui_url=ui_url), choice.secret_name


async def shared_page_candidate(services: Services, body: Any, parse: Callable[[Any], Any], status: TrackedStatus,
                                mlflow_id: str | None) -> tuple[Any, ObjectIdentity, TrackingTarget] | None:
    """For a drift check that compares an object against a shared page: its parsed spec,
    identity and server, if it is Ready for its generation, has its MLflow id and is still
    bound to that server. None: a full reconcile decides (and reports any problem)."""
    if not ready_for_generation(body, status) or not mlflow_id:
        return None
    try:
        spec = parse(body.get("spec"))
        identity = ObjectIdentity.from_body(body)
        target = await resolve_target(services, identity.namespace, spec.tracking)
    except (ValueError, ReconcileProblem, TrackingError, KubernetesError):
        return None
    return (spec, identity, target) if target.uri == status.tracking_uri else None


def ready_for_generation(body: Any, status: Status) -> bool:
    """Whether the object's last reconcile made it Ready for the spec it has now: only then may
    a drift check compare it against a shared page instead of reconciling it."""
    return status.is_true("Ready") and status.observed_generation == body["metadata"].get("generation")


def verified_experiment(services: Services, target: TrackingTarget,
                        experiment: ExperimentInfo | None) -> ExperimentInfo | None:
    """The experiment as the ownership rules may read it: its ownership tags only if the
    operator signed them (logic/signing.py)."""
    if experiment is None:
        return None
    tags = signing.verified(services.config.ownership_keys, target.uri, "experiment", experiment.experiment_id,
                            experiment.tags, or_as=("experiment-name", experiment.name))
    return experiment if tags is experiment.tags else dataclasses.replace(experiment, tags=tags)


def verified_model(services: Services, target: TrackingTarget,
                   model: RegisteredModelInfo | None) -> RegisteredModelInfo | None:
    """The registered model as the ownership rules may read it (see verified_experiment)."""
    if model is None:
        return None
    tags = signing.verified(services.config.ownership_keys, target.uri, "registered-model", model.name, model.tags)
    return model if tags is model.tags else dataclasses.replace(model, tags=tags)


def signed_ownership(services: Services, target: TrackingTarget, entity: signing.Entity, entity_id: str,
                     tags: dict[str, str]) -> dict[str, str]:
    return signing.signed(services.config.ownership_keys, target.uri, entity, entity_id, tags)


_PLURALS = {"Experiment": "experiments", "RegisteredModel": "registeredmodels", "TrainingRun": "trainingruns",
            "TrainingSweep": "trainingsweeps"}


async def owner_alive(services: Services, tags: dict[str, str], identity: ObjectIdentity) -> bool:
    """Whether the object of this namespace that an MLflow entity is tagged with still exists
    (only asked when another object of the namespace owns it)."""
    if ownership.relation(tags, identity) is not ownership.Relation.OTHER_OBJECT:
        return True
    plural = _PLURALS.get(tags.get(TAG_KIND, ""))
    if plural is None:
        return True
    found = await services.kube.get_object(plural, identity.namespace, tags.get(TAG_NAME, ""))
    return found is not None and found["metadata"]["uid"] == tags.get(TAG_UID)
