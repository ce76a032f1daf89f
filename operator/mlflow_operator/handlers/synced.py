"""The handlers of a kind kept in sync with an MLflow entity (Experiment, RegisteredModel):
reconcile on change, a watch that feeds one drift pass per interval, deletionPolicy."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import kopf

from mlflow_operator.api.common import GROUP, VERSION
from mlflow_operator.caches.watches import shared_copy
from mlflow_operator.handlers.common import DELETE_TIMEOUT_SECONDS, Kind, delete_and_report, handle_change
from mlflow_operator.handlers.drift import start_drift_passes
from mlflow_operator.handlers.objects import services_of
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.runtime import kopf_adapter
from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.runtime.metrics import reconciling


def synced_view(body: Any) -> dict[str, Any]:
    """What the drift pass needs of an object (and a TrainingRun of its Experiment), as its
    watch last saw it: identity, generation, spec and status. No resourceVersion: a reconcile
    never takes the view for a whole object, it reads one."""
    metadata = body["metadata"]
    return shared_copy({
        "kind": body.get("kind"),
        "metadata": {key: metadata[key] for key in ("namespace", "name", "uid", "generation", "deletionTimestamp")
                     if key in metadata},
        "spec": dict(body.get("spec") or {}),
        "status": dict(body.get("status") or {}),
    })


Seen = Callable[[Any, Any, Any, "str | None"], Awaitable[None]]


def register_synced_kind(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    kind: Kind[Any, Any],
    in_sync: Callable[[Services, Any], Awaitable[bool]] | None = None,
    seen: Seen | None = None,
) -> None:
    """Handlers for a kind kept in sync with an MLflow entity (Experiment, RegisteredModel):
    reconcile on create/update/resume, a watch that keeps each object's synced_view for one
    drift pass over them all per interval (handlers/drift.py), deletionPolicy on delete.
    `in_sync` tells the drift pass, without MLflow calls of its own, that an object needs no
    reconcile; `seen(body, memo, logger, event type)` is called on each watch event after the
    cache holds it."""
    resource = (GROUP, VERSION, kind.plural)  # positional: kopf's typed selector

    async def left_alone(body: Any, memo: Any) -> bool:
        if in_sync is None:
            return False
        with reconciling(kind.name):
            return await in_sync(services_of(memo), body)

    async def changed(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int, reason: str,
                      **_: Any) -> None:
        # A restart resumes every object: one that is Ready for its spec and matches the
        # shared page costs no MLflow call of its own (as a drift check).
        resumed = reason == kopf.Reason.RESUME.value and retry == 0
        await handle_change(kind, body, memo, logger, retry,
                            left_alone=(lambda: left_alone(body, memo)) if resumed else None)

    kopf_adapter.register_change_handler(registry, resource, changed)

    @kopf.on.event(*resource, id="watch", registry=registry)
    async def watched(body: kopf.Body, memo: kopf.Memo, logger: Any, type: str | None = None, **_: Any) -> None:
        start_drift_passes(kind, memo, in_sync, config.drift_interval)
        cache = services_of(memo).caches.watched.synced(kind.plural)
        assert cache is not None
        cache.put((body["metadata"]["namespace"], body["metadata"]["name"]),
                  None if type == "DELETED" else synced_view(body))
        if seen is not None:
            await seen(body, memo, logger, type)

    @kopf.on.delete(*resource, id="delete", timeout=DELETE_TIMEOUT_SECONDS, registry=registry)
    async def deleted(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int, **_: Any) -> None:
        await delete_and_report(kind, body=body, memo=memo, logger=logger, retry=retry)
