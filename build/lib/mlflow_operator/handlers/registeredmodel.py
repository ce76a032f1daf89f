"""kopf wiring for RegisteredModel: events and the drift timer -> reconciler -> status."""

from __future__ import annotations

from typing import Any

import kopf

from mlflow_operator.api.common import GROUP, VERSION
from mlflow_operator.api.registeredmodel import KIND, PLURAL
from mlflow_operator.config import OperatorConfig
from mlflow_operator.handlers.common import (
    drift_check_due,
    forget_object,
    outcome_for_error,
    post_events,
    reconcile_and_report,
    retry_delay,
    services_of,
)
from mlflow_operator.reconcilers.registeredmodel import (
    EXTRA_CONDITIONS,
    delete_registered_model,
    reconcile_registered_model,
)

DELETE_TIMEOUT_SECONDS = 600


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    resource = dict(group=GROUP, version=VERSION, plural=PLURAL, registry=registry)

    @kopf.on.resume(id="reconcile", **resource)
    @kopf.on.create(id="reconcile", **resource)
    @kopf.on.update(id="reconcile", field="spec", **resource)
    async def registered_model_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int,
                                       **_: Any) -> None:
        await _reconcile(body, memo, logger, retry=retry)

    @kopf.timer(id="drift", interval=config.drift_interval, initial_delay=config.drift_interval, **resource)
    async def registered_model_drift(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        if drift_check_due(body, memo):
            await _reconcile(body, memo, logger, retry=None)

    @kopf.on.delete(id="delete", timeout=DELETE_TIMEOUT_SECONDS, **resource)
    async def registered_model_deleted(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int,
                                       **_: Any) -> None:
        services = services_of(memo)
        try:
            event = await delete_registered_model(services, body)
        except Exception as error:  # noqa: BLE001 - reported, then retried until the timeout
            outcome = outcome_for_error(error)
            if retry == 0:
                post_events(body, [("Warning", "DeleteFailed", outcome.message)])
            raise kopf.TemporaryError(f"deletionPolicy Delete: {outcome.message}",
                                      delay=retry_delay(retry, services.config.drift_interval))
        if event:
            post_events(body, [event])
            logger.info(event[2])
        forget_object(memo, body["metadata"]["uid"])


async def _reconcile(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int | None) -> None:
    services = services_of(memo)

    async def work(fresh: dict[str, Any]):
        return await reconcile_registered_model(services, fresh, drift_check=retry is None)

    await reconcile_and_report(kind=KIND, plural=PLURAL, body=body, memo=memo, logger=logger, work=work,
                               retry=retry, managed_extra=EXTRA_CONDITIONS)
