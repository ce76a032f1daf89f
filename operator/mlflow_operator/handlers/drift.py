"""One drift pass per kind kept in sync with MLflow (Experiment, RegisteredModel), instead of
a timer per object.

Every drift interval, the pass goes through the kind's watch cache: an object is left alone
when it is Ready for its spec and matches the page of its namespace's entities that one
shared search found (`in_sync`, no call of its own); only the others are reconciled, a few
at a time. Idle, the cost per interval is a search per namespace and server plus a
comparison per object in memory: no task, timer or Kubernetes call per object.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any, Awaitable, Callable, cast

import kopf

from mlflow_operator.gateways.kubernetes import KubernetesError
from mlflow_operator.handlers.common import Kind, reconcile_and_report
from mlflow_operator.handlers.objects import drift_check_due, services_of
from mlflow_operator.logic import timestamps
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.runtime import kopf_adapter
from mlflow_operator.runtime.metrics import DRIFT_PASS_DURATION, DRIFT_PASSES, DRIFTED, reconciling

logger = logging.getLogger("mlflow_operator.drift")

# Reconciles of drifted objects at once (each waits on MLflow and Kubernetes round trips).
RECONCILES_AT_ONCE = 8
# Objects compared between two yields to the event loop (a comparison never waits).
COMPARISONS_PER_YIELD = 200

InSync = Callable[[Services, Any], Awaitable[bool]]


async def drifted_objects(kind: Kind[Any, Any], memo: Any, in_sync: InSync | None) -> list[dict[str, Any]]:
    """The objects of the kind's watch cache a drift check must reconcile: not being deleted,
    reconciled for their generation, not being reconciled now, and not `in_sync`."""
    services = services_of(memo)
    cache = services.caches.watched.synced(kind.plural)
    if cache is None:
        return []
    drifted = []
    with reconciling(kind.name):
        for count, body in enumerate(cache.values(), start=1):
            if count % COMPARISONS_PER_YIELD == 0:
                await asyncio.sleep(0)
            if not drift_check_due(body, memo):
                continue
            if in_sync is not None and await _in_sync_or_drifted(in_sync, services, body):
                continue
            drifted.append(body)
    return drifted


async def _in_sync_or_drifted(in_sync: InSync, services: Services, body: dict[str, Any]) -> bool:
    """One object's comparison; anything it raises (a server's odd reply, a spec the operator
    now refuses) makes that object a reconcile, which reports it, and never stops the pass."""
    try:
        return await in_sync(services, body)
    except Exception:  # noqa: BLE001 - reported by the object's own reconcile
        return False


async def drift_pass(kind: Kind[Any, Any], memo: Any, in_sync: InSync | None, settings: kopf.OperatorSettings) -> int:
    """Reconcile every drifted object of the kind; the number reconciled."""
    started = time.perf_counter()
    drifted = await drifted_objects(kind, memo, in_sync)
    if drifted:
        logger.info("drift check: %d %s(s) to reconcile", len(drifted), kind.name)
    slots = asyncio.Semaphore(RECONCILES_AT_ONCE)

    async def reconcile(body: dict[str, Any]) -> None:
        metadata = body["metadata"]
        # Only the identity: the reconcile reads the whole object fresh (the view is partial).
        identity: dict[str, Any] = {"kind": kind.name,
                    "metadata": {key: metadata[key] for key in ("namespace", "name", "uid")}}
        object_logger = kopf.ObjectLogger(body=kopf.Body(cast(kopf.RawBody, identity)), settings=settings)
        async with slots:
            try:
                await reconcile_and_report(kind, body=identity, memo=memo, logger=object_logger, drift_check=True)
            except Exception:  # noqa: BLE001 - one object's failure does not stop the pass
                object_logger.exception("drift check failed; the next pass tries again")

    await asyncio.gather(*(reconcile(body) for body in drifted))
    DRIFTED.labels(kind=kind.name).inc(len(drifted))
    DRIFT_PASS_DURATION.labels(kind=kind.name).observe(time.perf_counter() - started)
    return len(drifted)


# The memo key of kopf's settings (the start-up handler keeps them there).
KOPF_SETTINGS = "kopf_settings"
# The memo key of this process's identity among kopf's peers (runtime/process.py passes it to kopf).
PEER_IDENTITY = "peer_identity"


async def standing_by(memo: Any, settings: kopf.OperatorSettings) -> bool:
    """Whether kopf keeps this replica paused for a peer (its handlers do not run, so neither
    does a drift pass): read from the peering objects, as kopf reads them. A peering object
    that is missing or cannot be read pauses it too (kopf's peering is mandatory here)."""
    if settings.peering.standalone:
        return False
    services = services_of(memo)
    namespaces: list[str | None] = [None] if settings.peering.clusterwide else list(services.config.namespaces)
    try:
        for namespace in namespaces:
            peers = await services.kube.get_peering_status(namespace, settings.peering.name)
            if peers is None or kopf_adapter.standing_by(peers, memo.get(PEER_IDENTITY, ""), settings.peering.priority,
                                                    timestamps.now()):
                return True
    except KubernetesError as error:
        logger.info("cannot read the peering object (%s); the drift pass waits for the next interval", error)
        return True
    return False


async def drift_passes(kind: Kind[Any, Any], memo: Any, in_sync: InSync | None, settings: kopf.OperatorSettings,
                       interval: float) -> None:
    """A drift pass every `interval` seconds, until cancelled. The first one comes at a random
    point of the first interval, so that the kinds' passes do not fall together; a pass that
    takes longer than the interval is followed by the next at once."""
    await asyncio.sleep(random.uniform(0.5, 1.0) * interval)
    while True:
        started = time.monotonic()
        try:
            if await standing_by(memo, settings):
                DRIFT_PASSES.labels(kind=kind.name, outcome="standby").inc()
            else:
                await drift_pass(kind, memo, in_sync, settings)
                DRIFT_PASSES.labels(kind=kind.name, outcome="ran").inc()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the next pass tries again
            logger.exception("drift pass over %ss failed", kind.name)
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def start_drift_passes(kind: Kind[Any, Any], memo: Any, in_sync: InSync | None, interval: float) -> None:
    """Start the kind's drift passes if they are not running yet. Called from the kind's watch
    handler: kopf sets up the posting of Events (which a reconcile does) for its handlers'
    context, which a task started from one inherits; the operator's cleanup stops it."""
    background: dict[str, asyncio.Task[None]] = memo["background"]
    key = f"drift-{kind.plural}"
    if key not in background:
        background[key] = asyncio.create_task(drift_passes(kind, memo, in_sync, memo[KOPF_SETTINGS], interval),
                                              name=f"drift passes over {kind.plural}")
