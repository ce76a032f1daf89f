"""kopf wiring for Experiment: change events and the drift timer -> reconciler -> status."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from mlflow_operator.api.common import GROUP, VERSION
from mlflow_operator.api.experiment import KIND, PLURAL, ExperimentSpec
from mlflow_operator.config import OperatorConfig
from mlflow_operator.handlers.common import Kind, register_synced_kind
from mlflow_operator.reconcilers.experiment import delete_experiment, experiment_in_sync, reconcile_experiment

EXPERIMENT = Kind(KIND, PLURAL, ExperimentSpec.parse, reconcile_experiment)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    register_synced_kind(registry, config, EXPERIMENT, delete=delete_experiment, in_sync=experiment_in_sync)
    kopf.index(GROUP, VERSION, PLURAL, id="experiments_by_name", registry=registry)(experiment_summary)


def experiment_summary(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    """What a TrainingRun needs of its Experiment (its server and whether it is Ready), as
    the watch last saw it: starting a run reads no Experiment."""
    metadata, status = body["metadata"], body.get("status") or {}
    summary = {
        "metadata": {"name": metadata["name"], "namespace": metadata["namespace"]},
        "spec": {"tracking": copy.deepcopy((body.get("spec") or {}).get("tracking"))},
        "status": copy.deepcopy({key: status[key] for key in ("experimentId", "experimentName", "conditions")
                                 if key in status}),
    }
    return {(metadata["namespace"], metadata["name"]): summary}
