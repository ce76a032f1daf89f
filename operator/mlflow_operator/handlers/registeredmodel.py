"""kopf wiring for RegisteredModel: change events and the drift timer -> reconciler -> status."""

from __future__ import annotations

import kopf

from mlflow_operator.api.registeredmodel import KIND, PLURAL
from mlflow_operator.config import OperatorConfig
from mlflow_operator.handlers.common import register_synced_kind
from mlflow_operator.reconcilers.registeredmodel import (
    EXTRA_CONDITIONS,
    delete_registered_model,
    reconcile_registered_model,
)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    register_synced_kind(registry, config, kind=KIND, plural=PLURAL, reconcile=reconcile_registered_model,
                         delete=delete_registered_model, managed_extra=EXTRA_CONDITIONS)
