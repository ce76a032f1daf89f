"""What every kind's handlers share: one reconcile at a time per object, from a fresh read,
status written inside that critical section, Events on transitions, metrics, and retries
with backoff for problems that pass.

Status is written through the Kubernetes gateway rather than kopf's end-of-handler patch:
a patch applied after the lock is released could overwrite what a later reconcile wrote
(e.g. a Job event marking a run Succeeded, then an older "Running" patch landing).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Generic

from mlflow_operator.api.common import GROUP, VERSION, ObjectIdentity
from mlflow_operator.config import OperatorConfig

import kopf

from mlflow_operator.gateways.kubernetes import KubernetesError
from mlflow_operator.logic import timestamps
from mlflow_operator.logic.conditions import (
    Outcome,
    ReconcileProblem,
    apply_outcome,
    changed_reason,
    progressing,
    stalled,
)
from mlflow_operator.metrics import RECONCILE_DURATION, RECONCILES
from mlflow_operator.reconcilers.common import Context, Event, Result, Services, SpecT, StatusWriter, parse_spec
from mlflow_operator.tracking import TrackingError, TrackingUnauthorized, TrackingUnavailable

def _no_status(status: dict[str, Any]) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Kind(Generic[SpecT]):
    """How the handlers reconcile one kind: every kind follows this one contract (a parsed
    spec in a Context, one Result, errors mapped to outcomes in one place, here)."""

    name: str
    plural: str
    parse: Callable[[Any], SpecT]
    reconcile: Callable[[Context[SpecT]], Awaitable[Result]]
    # Condition types besides Ready/Reconciling/Stalled that the kind sets and clears.
    managed_extra: tuple[str, ...] = ()
    # Status fields written with a failed outcome, from the status read (TrainingRun: Pending).
    status_on_error: Callable[[dict[str, Any]], dict[str, Any]] = _no_status


def services_of(memo: Any) -> Services:
    return memo["services"]


def object_lock(memo: Any, uid: str) -> asyncio.Lock:
    """One reconcile at a time per object, shared by its change handlers, its drift timer
    and handlers of other resources (a Job's events reconcile its TrainingRun)."""
    locks: dict[str, asyncio.Lock] = memo["locks"]
    lock = locks.get(uid)
    if lock is None:
        lock = locks[uid] = asyncio.Lock()
    return lock


def forget_object(memo: Any, uid: str) -> None:
    memo["locks"].pop(uid, None)


def retry_delay(retry: int, cap: float) -> float:
    return min(cap, 2.0 * (2 ** min(retry, 10)))


def outcome_for_error(error: Exception) -> Outcome:
    if isinstance(error, ReconcileProblem):
        return error.outcome
    if isinstance(error, TrackingUnauthorized):
        return stalled(error.reason, f"the MLflow server refused the credentials: {error}")
    if isinstance(error, TrackingUnavailable):
        return progressing(error.reason, f"MLflow call failed, will retry: {error}")
    if isinstance(error, TrackingError):
        # The server understood and refused (4xx): the same request will not succeed later.
        return stalled(error.reason, f"MLflow refused a request: {error}")
    if isinstance(error, KubernetesError):
        return progressing("KubernetesError", f"Kubernetes API call failed, will retry: {error}")
    raise error


def replace_maps(before: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch merges maps key by key: null out keys that a map in `update` no
    longer has (a removed alias, a metric), so status maps are replaced, not accumulated."""
    result = dict(update)
    for key, value in update.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            result[key] = {**{k: None for k in old if k not in value}, **value}
    return result


def post_events(body: Any, events: list[Event]) -> None:
    for type_, reason, message in events:
        kopf.event(body, type=type_, reason=reason, message=message[:1024])


def drift_check_due(body: Any, memo: Any) -> bool:
    """The timer leaves objects alone while a change handler owns them."""
    status = body.get("status") or {}
    if body["metadata"].get("deletionTimestamp"):
        return False
    if status.get("observedGeneration") != body["metadata"].get("generation"):
        return False
    return not object_lock(memo, body["metadata"]["uid"]).locked()


STALE_READ_ATTEMPTS = 5


async def reconcile_and_report(
    kind: Kind[Any],
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
    metadata = body["metadata"]
    async with object_lock(memo, metadata["uid"]):
        for attempt in range(STALE_READ_ATTEMPTS):
            try:
                outcome = await _reconcile_once(kind, metadata, services, logger, drift_check)
                break
            except KubernetesError as error:
                if error.status != 409 or attempt == STALE_READ_ATTEMPTS - 1:
                    raise
                logger.info("status changed while reconciling; reconciling again from a fresh read")
        if outcome is None:
            return None
    if outcome.state == "progressing" and retry is not None and not outcome.awaited:
        raise kopf.TemporaryError(f"{outcome.reason}: {outcome.message}",
                                  delay=retry_delay(retry, services.config.drift_interval))
    return outcome


async def _reconcile_once(kind: Kind[Any], metadata: Any, services: Services,
                          logger: logging.Logger | logging.LoggerAdapter, drift_check: bool) -> Outcome | None:
    namespace, name = metadata["namespace"], metadata["name"]
    fresh = await services.kube.get_object(kind.plural, namespace, name)
    if fresh is None or fresh["metadata"]["uid"] != metadata["uid"]:
        return None
    if fresh["metadata"].get("deletionTimestamp"):
        return None  # the delete handler owns it now
    writer = StatusWriter(services.kube, kind.plural, namespace, name, fresh["metadata"].get("resourceVersion"))
    started = time.perf_counter()
    status_before = dict(fresh.get("status") or {})
    ctx: Context[Any] | None = None
    try:
        ctx = Context(services, ObjectIdentity.from_body(fresh), parse_spec(kind.parse, fresh.get("spec")),
                      dict(status_before), writer, drift_check=drift_check)
        result = await kind.reconcile(ctx)
        outcome, status_update, events = result.outcome, dict(result.status), [*ctx.events, *result.events]
    except KubernetesError as error:
        if error.status == 409:
            raise  # decided on a stale read: start again
        outcome, status_update = outcome_for_error(error), kind.status_on_error(status_before)
        events = list(ctx.events) if ctx else []
    except (ReconcileProblem, TrackingError) as error:
        outcome, status_update = outcome_for_error(error), kind.status_on_error(status_before)
        events = list(ctx.events) if ctx else []
    except Exception:
        RECONCILES.labels(kind=kind.name, outcome="error").inc()
        raise
    finally:
        RECONCILE_DURATION.labels(kind=kind.name).observe(time.perf_counter() - started)

    generation = fresh["metadata"].get("generation")
    conditions = apply_outcome(status_before.get("conditions"), outcome, generation, managed_extra=kind.managed_extra)
    status_update.update(conditions=conditions, observedGeneration=generation)
    await writer.write(replace_maps(status_before, status_update))
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
    return outcome


DELETE_TIMEOUT_SECONDS = 3600  # our own budget below lets go first
# How long deleting an object keeps retrying MLflow through an outage before letting go.
CLEANUP_BUDGET_SECONDS = 120


def register_synced_kind(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    kind: Kind[Any],
    delete: Callable[[Services, dict[str, Any]], Awaitable[Event | None]],
) -> None:
    """Handlers for a kind kept in sync with an MLflow entity (Experiment, RegisteredModel):
    reconcile on create/update/resume, check drift on a timer, apply deletionPolicy."""
    resource = (GROUP, VERSION, kind.plural)  # positional: kopf's typed selector

    async def run(body: Any, memo: Any, logger: Any, retry: int | None) -> None:
        await reconcile_and_report(kind, body=body, memo=memo, logger=logger, retry=retry,
                                   drift_check=retry is None)

    @kopf.on.resume(*resource, id="reconcile", registry=registry)
    @kopf.on.create(*resource, id="reconcile", registry=registry)
    @kopf.on.update(*resource, id="reconcile", field="spec", registry=registry)
    async def changed(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int, **_: Any) -> None:
        await run(body, memo, logger, retry)

    @kopf.timer(*resource, id="drift", interval=config.drift_interval, initial_delay=config.drift_interval, registry=registry)
    async def drift(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        if drift_check_due(body, memo):
            await run(body, memo, logger, None)

    @kopf.on.delete(*resource, id="delete", timeout=DELETE_TIMEOUT_SECONDS, registry=registry)
    async def deleted(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int, **_: Any) -> None:
        await delete_and_report(plural=kind.plural, body=body, memo=memo, logger=logger, retry=retry,
                                delete=delete, what="deletionPolicy Delete")


async def delete_and_report(
    *,
    plural: str,
    body: Any,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter,
    retry: int,
    delete: Callable[[Services, dict[str, Any]], Awaitable[Event | None]],
    what: str,
    budget_seconds: float = CLEANUP_BUDGET_SECONDS,
) -> None:
    """Run a kind's deletion step under the object's lock, on a fresh read.

    Waiting on something that will end (open runs) is retried quietly. A failure that
    passes (an outage) is one Warning Event, then retried with backoff until `budget_seconds`
    after the deletion began; a failure that will not pass (a refusal, a missing Secret), or
    the budget spent, lets the object go with a Warning that says what was left in MLflow, so
    that deleting an object or a whole namespace never hangs on MLflow."""
    services = services_of(memo)
    metadata = body["metadata"]
    async with object_lock(memo, metadata["uid"]):
        fresh = await services.kube.get_object(plural, metadata["namespace"], metadata["name"]) or body
        try:
            event = await delete(services, fresh)
        except (ReconcileProblem, TrackingError, KubernetesError) as error:
            outcome = outcome_for_error(error)
            spent = timestamps.seconds_since(fresh["metadata"].get("deletionTimestamp"))
            if cleanup_keeps_trying(outcome, spent, budget_seconds):
                if retry == 0:
                    post_events(fresh, [("Normal" if outcome.expected else "Warning",
                                         outcome.reason if outcome.expected else "DeleteFailed", outcome.message)])
                raise kopf.TemporaryError(f"{what}: {outcome.message}",
                                          delay=retry_delay(retry, services.config.drift_interval)) from None
            event = ("Warning", "CleanupAbandoned",
                     f"{what} gave up, MLflow left as it is: {outcome.reason}: {outcome.message}")
    if event:
        post_events(fresh, [event])
        (logger.warning if event[0] == "Warning" else logger.info)(event[2])
    forget_object(memo, metadata["uid"])


def cleanup_keeps_trying(outcome: Outcome, spent_seconds: float, budget_seconds: float) -> bool:
    """Whether a deletion step that failed is tried again: waiting on something that will end,
    always; an outage, within the budget; a refusal, never."""
    if outcome.state != "progressing":
        return False
    return outcome.expected or spent_seconds < budget_seconds

