"""kopf wiring for Experiment: change events and the drift timer -> reconciler -> status."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from mlflow_operator.api.common import GROUP, VERSION
from mlflow_operator.api.experiment import KIND, PLURAL, ExperimentSpec
from mlflow_operator.config import OperatorConfig
from mlflow_operator.handlers.common import Kind, register_synced_kind, services_of
from mlflow_operator.handlers.trainingrun import experiment_ready, wake_training_runs
from mlflow_operator.handlers.trainingsweep import wake_training_sweeps
from mlflow_operator.reconcilers.experiment import delete_experiment, experiment_in_sync, reconcile_experiment

EXPERIMENT = Kind(KIND, PLURAL, ExperimentSpec.parse, reconcile_experiment)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    register_synced_kind(registry, config, EXPERIMENT, delete=delete_experiment, in_sync=experiment_in_sync)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="watch", registry=registry)
    async def experiment_seen(body: kopf.Body, memo: kopf.Memo, logger: Any, type: str | None = None,
                              **_: Any) -> None:
        """Kept for the TrainingRuns that name it; once Ready, it starts the runs and sweeps waiting for it
        (after the cache holds it Ready, so that their reconcile sees it so)."""
        cache = services_of(memo).watched.experiments
        assert cache is not None
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        cache.put(key, None if type == "DELETED" else experiment_summary(body))
        if type != "DELETED" and experiment_ready(body):
            await wake_training_runs(body, memo, logger)
            await wake_training_sweeps(body, memo, logger)


def experiment_summary(body: kopf.Body) -> dict[str, Any]:
    """What a TrainingRun needs of its Experiment (its server and whether it is Ready), as
    the watch last saw it: starting a run reads no Experiment."""
    metadata, status = body["metadata"], body.get("status") or {}
    return {
        "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]},
        "spec": {"tracking": copy.deepcopy((body.get("spec") or {}).get("tracking"))},
        "status": copy.deepcopy({key: status[key] for key in ("experimentId", "experimentName", "conditions")
                                 if key in status}),
    }
