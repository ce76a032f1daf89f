"""What every kind's handlers share: one reconcile at a time per object, conditions,
Events on transitions, metrics, and retries with backoff for problems that pass."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Protocol

import kopf

from mlflow_operator.gateways.kubernetes import KubernetesError
from mlflow_operator.logic.conditions import (
    Outcome,
    ReconcileProblem,
    apply_outcome,
    changed_reason,
    progressing,
    stalled,
)
from mlflow_operator.metrics import RECONCILE_DURATION, RECONCILES
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.tracking import TrackingError, TrackingUnauthorized

Event = tuple[str, str, str]
MAX_RETRY_DELAY = 120.0


class Result(Protocol):
    outcome: Outcome
    status: dict[str, Any]
    events: list[Event]


def services_of(memo: Any) -> Services:
    return memo["services"]


def object_lock(memo: Any) -> asyncio.Lock:
    """One reconcile at a time per object: change handlers and the drift timer share it."""
    lock = memo.get("lock")
    if lock is None:
        lock = memo["lock"] = asyncio.Lock()
    return lock


def retry_delay(retry: int) -> float:
    return min(MAX_RETRY_DELAY, 2.0 * (2 ** min(retry, 10)))


def outcome_for_error(error: Exception) -> Outcome:
    if isinstance(error, ReconcileProblem):
        return error.outcome
    if isinstance(error, TrackingUnauthorized):
        return stalled(error.reason, f"the MLflow server refused the credentials: {error}")
    if isinstance(error, TrackingError):
        return progressing(error.reason, f"MLflow call failed, will retry: {error}")
    if isinstance(error, KubernetesError):
        return progressing("KubernetesError", f"Kubernetes API call failed, will retry: {error}")
    raise error


def post_events(body: Any, events: list[Event]) -> None:
    for type_, reason, message in events:
        kopf.event(body, type=type_, reason=reason, message=message[:1024])


def drift_check_due(body: Any, memo: Any) -> bool:
    """The timer leaves objects alone while a change handler owns them."""
    status = body.get("status") or {}
    generation = body["metadata"].get("generation")
    if body["metadata"].get("deletionTimestamp"):
        return False
    if status.get("observedGeneration") != generation:
        return False
    return not object_lock(memo).locked()


async def reconcile_and_report(
    *,
    kind: str,
    body: Any,
    patch: kopf.Patch,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter,
    work: Callable[[], Awaitable[Result]],
    retry: int = 0,
    from_timer: bool = False,
    managed_extra: tuple[str, ...] = (),
) -> Outcome:
    """Run `work` under the object's lock and write its outcome to status.

    Transient failures are retried by kopf with exponential backoff (change handlers) or at
    the next drift check (timer). A repeated failure is one Event, not one per attempt.
    """
    async with object_lock(memo):
        started = time.perf_counter()
        status_before = dict(body.get("status") or {})
        events: list[Event] = []
        status_update: dict[str, Any] = {}
        try:
            result = await work()
            outcome, status_update, events = result.outcome, result.status, list(result.events)
        except (ReconcileProblem, TrackingError, KubernetesError) as error:
            outcome = outcome_for_error(error)
        except Exception:
            RECONCILES.labels(kind=kind, outcome="error").inc()
            raise
        finally:
            RECONCILE_DURATION.labels(kind=kind).observe(time.perf_counter() - started)

        generation = body["metadata"].get("generation")
        conditions = apply_outcome(status_before.get("conditions"), outcome, generation,
                                   managed_extra=managed_extra)
        for key, value in status_update.items():
            patch.status[key] = value
        patch.status["conditions"] = conditions
        patch.status["observedGeneration"] = generation
        if not outcome.is_ready and changed_reason(status_before.get("conditions"), conditions):
            events.append(("Warning", outcome.reason, outcome.message))
        post_events(body, events)

        if outcome.is_ready:
            RECONCILES.labels(kind=kind, outcome="success").inc()
            logger.info("reconciled: %s", outcome.message)
            return outcome
        RECONCILES.labels(kind=kind, outcome="retry" if outcome.state == "progressing" else "stalled").inc()
        logger.warning("%s: %s", outcome.reason, outcome.message)
    if outcome.state == "progressing" and not from_timer:
        raise kopf.TemporaryError(f"{outcome.reason}: {outcome.message}", delay=retry_delay(retry))
    return outcome
