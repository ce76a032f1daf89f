"""The reconcile contract every kind's handlers run (`Kind`): one reconcile at a time per
object, from a fresh read, the one status write inside that critical section, Events,
errors mapped to conditions, metrics, retries with backoff for problems that pass, and the
deletion step. Per-object memory is in objects.py, status patches in patches.py.

Status is written through the Kubernetes gateway rather than kopf's end-of-handler patch:
a patch applied after the lock is released could overwrite what a later reconcile wrote
(e.g. a Job event marking a run Succeeded, then an older "Running" patch landing).
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic

import kopf

from mlflow_operator.api.common import ObjectIdentity, Status
from mlflow_operator.gateways.kubernetes import KubernetesError
from mlflow_operator.handlers.objects import HANDLED, ObjectState, forget_object, object_state, services_of
from mlflow_operator.handlers.patches import replace_maps, status_digest, unchanged
from mlflow_operator.logic import timestamps
from mlflow_operator.logic.conditions import (
    Outcome,
    ReconcileProblem,
    apply_outcome,
    changed_reason,
    progressing,
    stalled,
)
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.reconcilers.common import (
    Context,
    Event,
    Services,
    SpecT,
    StatusT,
    StatusWriter,
    parse_spec,
    parse_status,
)
from mlflow_operator.runtime.kopf_adapter import HandledGenerations
from mlflow_operator.runtime.metrics import EVENTS, RECONCILE_DURATION, RECONCILES, reconciling
from mlflow_operator.tracking.entities import TrackingError, TrackingStalled, TrackingUnauthorized, TrackingUnavailable


def _no_status(status: dict[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Kind(Generic[SpecT, StatusT]):
    """How the handlers reconcile one kind: every kind follows this one contract (a parsed
    spec in a Context, one Outcome, errors mapped to outcomes in one place, here)."""

    name: str
    plural: str
    parse: Callable[[Any], SpecT]
    status_type: type[StatusT]
    reconcile: Callable[[Context[SpecT, StatusT]], Awaitable[Outcome]]
    # The deletion step (before kopf lets the object go), with what it does for the log.
    delete: Callable[[Context[SpecT, StatusT]], Awaitable[None]]
    deleting: str
    # Condition types besides Ready/Reconciling/Stalled that the kind sets and clears.
    managed_extra: tuple[str, ...] = ()
    # Status fields written with a failed outcome, from the status read (TrainingRun: Pending).
    status_on_error: Callable[[dict[str, Any]], dict[str, Any]] = _no_status
    # Told of the object as each status write left it (TrainingRun: its cache of open runs).
    written: Callable[[Services, dict[str, Any]], None] | None = None








async def handle_change(kind: Kind[Any, Any], body: Any, memo: Any, logger: logging.Logger | logging.LoggerAdapter,
                        retry: int, left_alone: Callable[[], Awaitable[bool]] | None = None) -> None:
    """A change handler (create, update, resume): reconcile, and once that returns, tell
    kopf's diff base that this generation is handled. A raise leaves it unhandled, and kopf
    retries it. `left_alone`: whether a resumed object needs no reconcile."""
    handled: HandledGenerations = memo[HANDLED]
    uid = body["metadata"]["uid"]
    handled.started(uid)
    if left_alone is None or not await left_alone():
        await reconcile_and_report(kind, body=body, memo=memo, logger=logger, retry=retry)
    handled.finished(uid, body["metadata"].get("generation"))










def retry_delay(retry: int, cap: float) -> float:
    return min(cap, 2.0 * (2 ** min(retry, 10)))


def outcome_for_error(error: Exception) -> Outcome:
    if isinstance(error, ReconcileProblem):
        return error.outcome
    if isinstance(error, TrackingUnauthorized):
        return stalled(error.reason, f"the MLflow server refused the credentials: {error}")
    if isinstance(error, TrackingStalled):
        # Retried by the next drift check or refresh, so that it holds no worker meanwhile.
        return progressing(error.reason, f"MLflow call not made, will retry: {error}", awaited=True)
    if isinstance(error, TrackingUnavailable):
        return progressing(error.reason, f"MLflow call failed, will retry: {error}")
    if isinstance(error, TrackingError):
        # The server understood and refused (4xx): the same request will not succeed later.
        return stalled(error.reason, f"MLflow refused a request: {error}")
    if isinstance(error, KubernetesError):
        return progressing(Reason.KUBERNETES_ERROR, f"Kubernetes API call failed, will retry: {error}")
    raise error






def post_events(body: Any, events: list[Event]) -> None:
    for type_, reason, message in events:
        EVENTS.labels(kind=body.get("kind", ""), type=type_).inc()
        kopf.event(body, type=type_, reason=reason, message=message[:1024])






STALE_READ_ATTEMPTS = 5


async def reconcile_and_report(
    kind: Kind[Any, Any],
    *,
    body: Any,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter,
    retry: int | None = None,
    drift_check: bool = False,
) -> Outcome | None:
    """Reconcile a fresh copy of the object under its lock and write the outcome to status.

    Every status write carries the resourceVersion of the read it was decided on; when the
    object changed meanwhile (409), the reconcile starts again from a fresh read.
    With `retry` (a kopf change handler), problems that pass are retried by kopf with
    exponential backoff capped at the drift interval; without it (timer, watch of another
    resource) the next trigger retries. A repeated failure posts one Event, not one per attempt.
    Returns None when the object is gone.
    """
    services = services_of(memo)
    with reconciling(kind.name):
        outcome = await _reconcile_locked(kind, body, services, memo, logger, drift_check)
    if outcome is None:
        return None
    if outcome.state == "progressing" and retry is not None and not outcome.awaited:
        raise kopf.TemporaryError(f"{outcome.reason}: {outcome.message}",
                                  delay=retry_delay(retry, services.config.drift_interval))
    return outcome


async def _reconcile_locked(kind: Kind[Any, Any], body: Any, services: Services, memo: Any,
                            logger: logging.Logger | logging.LoggerAdapter, drift_check: bool) -> Outcome | None:
    state = object_state(memo, body["metadata"]["uid"])
    async with state.lock:
        if state.deleted:
            return None
        for attempt in range(STALE_READ_ATTEMPTS):
            try:
                # The body of a watch event is as fresh as a read if it holds this operator's
                # last status write; after a conflict, always read.
                current = body if attempt == 0 and _is_current(body, state) else None
                outcome = await _reconcile_once(kind, body["metadata"], current, state, services, logger,
                                                drift_check)
                break
            except KubernetesError as error:
                if error.status == 404:
                    return None  # deleted (with its namespace, say) before its status was written
                if error.status != 409 or attempt == STALE_READ_ATTEMPTS - 1:
                    raise
                logger.info("status changed while reconciling; reconciling again from a fresh read")
    return outcome




def _is_current(body: Any, state: ObjectState) -> bool:
    """Whether a handler's body is a whole object that holds this operator's last status
    write (a wake-up passes only the object's name and uid). Its version may be newer: kopf
    writes its annotations after a handler, and a spec change is what the body brings. A
    status write decided on a body older than the object is refused (409) and read again."""
    metadata = body.get("metadata") or {}
    if "spec" not in body or not metadata.get("resourceVersion"):
        return False
    if state.written_version is None or state.written_version == metadata["resourceVersion"]:
        return True
    return state.written_status == status_digest(body.get("status"))


def _remember_write(kind: Kind[Any, Any], services: Services, state: ObjectState, written: dict[str, Any]) -> None:
    state.written_version = written["metadata"]["resourceVersion"]
    state.written_status = status_digest(written.get("status"))
    if kind.written is not None:
        kind.written(services, written)


async def _reconcile_once(kind: Kind[Any, Any], metadata: Any, current: Any, state: ObjectState, services: Services,
                          logger: logging.Logger | logging.LoggerAdapter, drift_check: bool) -> Outcome | None:
    namespace, name = metadata["namespace"], metadata["name"]
    fresh = current if current is not None else await services.kube.get_object(kind.plural, namespace, name)
    if fresh is None or fresh["metadata"]["uid"] != metadata["uid"]:
        return None
    if fresh["metadata"].get("deletionTimestamp"):
        return None  # the delete handler owns it now
    writer = StatusWriter(services.kube, kind.plural, namespace, name, fresh["metadata"].get("resourceVersion"),
                          on_write=lambda written: _remember_write(kind, services, state, written))
    started = time.perf_counter()
    status_before = copy.deepcopy(dict(fresh.get("status") or {}))
    ctx: Context[Any, Any] | None = None
    try:
        ctx = _context(kind, services, fresh, writer, drift_check=drift_check)
        outcome = await kind.reconcile(ctx)
        events = list(ctx.events)
        status_update = dict(ctx.recorded)
    except KubernetesError as error:
        if error.status == 409:
            raise  # decided on a stale read: start again
        outcome = outcome_for_error(error)
        status_update = {**(ctx.recorded if ctx else {}), **kind.status_on_error(status_before)}
        events = list(ctx.events) if ctx else []
    except (ReconcileProblem, TrackingError) as error:
        outcome = outcome_for_error(error)
        status_update = {**(ctx.recorded if ctx else {}), **kind.status_on_error(status_before)}
        events = list(ctx.events) if ctx else []
    except Exception:
        RECONCILES.labels(kind=kind.name, outcome="error").inc()
        raise
    finally:
        RECONCILE_DURATION.labels(kind=kind.name).observe(time.perf_counter() - started)

    await _report(kind, fresh, status_before, ctx.stored if ctx else status_before, outcome, status_update, events,
                  writer, logger)
    return outcome


async def _report(kind: Kind[Any, Any], fresh: Any, status_before: dict[str, Any], stored: dict[str, Any],
                  outcome: Outcome, status_update: dict[str, Any], events: list[Event], writer: StatusWriter,
                  logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Write the outcome to status (`stored`: as read, and what checkpoints wrote), post the
    Events, count and log it."""
    generation = fresh["metadata"].get("generation")
    conditions = apply_outcome(status_before.get("conditions"), outcome, generation, managed_extra=kind.managed_extra)
    status_update.update(conditions=conditions, observedGeneration=generation)
    patch = replace_maps(stored, status_update)
    if not unchanged(stored, patch):  # an idempotent reconcile writes nothing
        await writer.write(patch)
    # A problem is an Event when it starts; expected progress (JobPending, Running, waiting for
    # an Experiment applied together) shows in the conditions and the log only.
    if not outcome.is_ready and not outcome.expected and changed_reason(status_before.get("conditions"), conditions):
        events.append(("Warning", outcome.reason, outcome.message))
    post_events(fresh, events)

    if outcome.is_ready:
        RECONCILES.labels(kind=kind.name, outcome="success").inc()
        logger.info("%s: %s", outcome.reason, outcome.message)
    else:
        RECONCILES.labels(kind=kind.name, outcome=outcome.state).inc()
        log = logger.info if outcome.expected else logger.warning
        log("%s: %s", outcome.reason, outcome.message)


DELETE_TIMEOUT_SECONDS = 3600  # our own budget below lets go first
# How long deleting an object keeps retrying MLflow through an outage before letting go.
CLEANUP_BUDGET_SECONDS = 120








def pending_until_started(status: dict[str, Any]) -> dict[str, Any]:
    """A TrainingRun or TrainingSweep that failed before it started is still Pending, with the
    reason in the conditions."""
    return {} if status.get("phase") else {"phase": "Pending"}


def stalled_for(status: Status, reasons: tuple[str, ...]) -> bool:
    """Whether the object is Stalled for one of `reasons` (those only a new spec or a
    restart of the operator can fix: no timer needs to look at it)."""
    stalled_condition = status.condition("Stalled") or {}
    return stalled_condition.get("status") == "True" and stalled_condition.get("reason") in reasons




async def delete_and_report(
    kind: Kind[Any, Any],
    *,
    body: Any,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter,
    retry: int,
    budget_seconds: float = CLEANUP_BUDGET_SECONDS,
) -> None:
    """Run a kind's deletion step under the object's lock, on a fresh read, through the same
    Context as a reconcile (parsed spec, status as read, ownership checks in the step).

    Waiting on something that will end (open runs) is retried quietly. A failure that
    passes (an outage) is one Warning Event, then retried with backoff until `budget_seconds`
    after the deletion began; a failure that will not pass (a refusal, a missing Secret), or
    the budget spent, lets the object go with a Warning that says what was left in MLflow, so
    that deleting an object or a whole namespace never hangs on MLflow."""
    services = services_of(memo)
    metadata = body["metadata"]
    with reconciling(body.get("kind", "")):
        state = object_state(memo, metadata["uid"])
        async with state.lock:
            fresh = await services.kube.get_object(kind.plural, metadata["namespace"], metadata["name"]) or body
            ctx: Context[Any, Any] | None = None
            try:
                writer = StatusWriter(services.kube, kind.plural, metadata["namespace"], metadata["name"],
                                      fresh["metadata"].get("resourceVersion"))
                ctx = _context(kind, services, fresh, writer, cleanup=True)
                await kind.delete(ctx)
                events = list(ctx.events)
            except (ReconcileProblem, TrackingError, KubernetesError) as error:
                outcome = outcome_for_error(error)
                spent = timestamps.seconds_since(fresh["metadata"].get("deletionTimestamp"))
                if cleanup_keeps_trying(outcome, spent, budget_seconds):
                    if retry == 0:
                        post_events(fresh, [("Normal" if outcome.expected else "Warning",
                                             outcome.reason if outcome.expected else "DeleteFailed", outcome.message)])
                    raise kopf.TemporaryError(f"{kind.deleting}: {outcome.message}",
                                              delay=retry_delay(retry, services.config.drift_interval)) from None
                events = [*(ctx.events if ctx else []), ("Warning", "CleanupAbandoned",
                          f"{kind.deleting} gave up, MLflow left as it is: {outcome.reason}: {outcome.message}")]
            state.deleted = True  # kopf lets the object go now
        post_events(fresh, events)
        for type_, _, message in events:
            (logger.warning if type_ == "Warning" else logger.info)(message)
    forget_object(memo, metadata["uid"])


def _context(kind: Kind[Any, Any], services: Services, fresh: Any, writer: StatusWriter, *,
             drift_check: bool = False, cleanup: bool = False) -> Context[Any, Any]:
    """The Context of a reconcile or a deletion step, from a fresh read: spec and status parsed."""
    metadata, stored = fresh["metadata"], dict(fresh.get("status") or {})
    return Context(services, ObjectIdentity.from_body(fresh), parse_spec(kind.parse, fresh.get("spec")),
                   parse_status(kind.status_type, stored), writer, drift_check=drift_check,
                   created_at=timestamps.parse(metadata.get("creationTimestamp")), metadata=metadata,
                   cleanup=cleanup, stored=stored)


def cleanup_keeps_trying(outcome: Outcome, spent_seconds: float, budget_seconds: float) -> bool:
    """Whether a deletion step that failed is tried again: waiting on something that will end,
    always; an outage, within the budget; a refusal, never."""
    if outcome.state != "progressing":
        return False
    return outcome.expected or spent_seconds < budget_seconds

