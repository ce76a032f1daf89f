"""kopf wiring for Experiment: change events and the drift timer -> reconciler -> status."""

from __future__ import annotations

import kopf

from mlflow_operator.api.experiment import KIND, PLURAL, ExperimentSpec
from mlflow_operator.config import OperatorConfig
from mlflow_operator.handlers.common import Kind, register_synced_kind
from mlflow_operator.reconcilers.experiment import delete_experiment, reconcile_experiment

EXPERIMENT = Kind(KIND, PLURAL, ExperimentSpec.parse, reconcile_experiment)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    register_synced_kind(registry, config, EXPERIMENT, delete=delete_experiment)
