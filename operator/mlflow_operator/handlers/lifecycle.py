"""The handlers of a kind that works through to an end (TrainingRun, TrainingSweep):
reconcile on change, a timer while open, its deletion step."""

from __future__ import annotations

from typing import Any, Callable

import kopf

from mlflow_operator.api.common import GROUP, VERSION
from mlflow_operator.handlers.common import (
    DELETE_TIMEOUT_SECONDS,
    Kind,
    delete_and_report,
    handle_change,
    reconcile_and_report,
)
from mlflow_operator.handlers.objects import dephase, drift_check_due
from mlflow_operator.runtime import kopf_adapter
from mlflow_operator.runtime.config import OperatorConfig


def register_lifecycle_kind(
    registry: kopf.OperatorRegistry,
    config: OperatorConfig,
    kind: Kind[Any, Any],
    *,
    is_open: Callable[..., bool],
) -> None:
    """Handlers for a kind that works through to an end (TrainingRun, TrainingSweep):
    reconcile on create/update/resume; while `is_open`, a timer (live progress, and what is
    left after an outage or an event missed while the operator was down); its deletion step."""
    resource = (GROUP, VERSION, kind.plural)  # positional: kopf's typed selector

    async def changed(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int, **_: Any) -> None:
        await handle_change(kind, body, memo, logger, retry)

    kopf_adapter.register_change_handler(registry, resource, changed)

    @kopf.timer(*resource, id="refresh", interval=config.drift_interval, when=is_open, registry=registry)
    async def refresh(body: kopf.Body, memo: kopf.Memo, logger: Any, **kwargs: Any) -> None:
        if await dephase(memo, body["metadata"]["uid"], config.drift_interval, kwargs["stopped"]):
            return
        if drift_check_due(body, memo):
            await reconcile_and_report(kind, body=body, memo=memo, logger=logger, drift_check=True)

    @kopf.on.delete(*resource, id="delete", timeout=DELETE_TIMEOUT_SECONDS, registry=registry)
    async def deleted(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int, **_: Any) -> None:
        await delete_and_report(kind, body=body, memo=memo, logger=logger, retry=retry)
