"""kopf wiring for Experiment: change events and the drift pass -> reconciler -> status."""

from __future__ import annotations

from typing import Any

import kopf

from mlflow_operator.api.experiment import KIND, PLURAL, ExperimentSpec, ExperimentStatus
from mlflow_operator.handlers.common import Kind
from mlflow_operator.handlers.synced import register_synced_kind
from mlflow_operator.handlers.waiting import Wake, experiment_ready
from mlflow_operator.reconcilers.experiment import delete_experiment, experiment_in_sync, reconcile_experiment
from mlflow_operator.runtime.config import OperatorConfig

EXPERIMENT = Kind(KIND, PLURAL, ExperimentSpec.parse, ExperimentStatus, reconcile_experiment, delete_experiment,
                  "deletionPolicy Delete")


def register(registry: kopf.OperatorRegistry, config: OperatorConfig, wake_when_ready: tuple[Wake, ...] = ()) -> None:
    """`wake_when_ready`: how the kinds that wait for an Experiment (TrainingRun,
    TrainingSweep) start the objects waiting for this one."""

    async def experiment_seen(body: kopf.Body, memo: kopf.Memo, logger: Any, type: str | None) -> None:
        """Once Ready, it starts the objects waiting for it (after the watch cache holds it
        Ready, so that their reconcile sees it so)."""
        if type != "DELETED" and experiment_ready(body):
            for wake in wake_when_ready:
                await wake(body, memo, logger)

    register_synced_kind(registry, config, EXPERIMENT, in_sync=experiment_in_sync,
                         seen=experiment_seen)
