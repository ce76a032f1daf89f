"""kopf wiring for RegisteredModel: change events and the drift pass -> reconciler -> status."""

from __future__ import annotations

import kopf

from mlflow_operator.api.registeredmodel import KIND, PLURAL, RegisteredModelSpec, RegisteredModelStatus
from mlflow_operator.handlers.common import Kind
from mlflow_operator.handlers.synced import register_synced_kind
from mlflow_operator.reconcilers.registeredmodel import (
    EXTRA_CONDITIONS,
    delete_registered_model,
    reconcile_registered_model,
    registered_model_in_sync,
)
from mlflow_operator.runtime.config import OperatorConfig

REGISTERED_MODEL = Kind(KIND, PLURAL, RegisteredModelSpec.parse, RegisteredModelStatus, reconcile_registered_model,
                        delete_registered_model, "deletionPolicy Delete", managed_extra=EXTRA_CONDITIONS)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    register_synced_kind(registry, config, REGISTERED_MODEL,
                         in_sync=registered_model_in_sync)
