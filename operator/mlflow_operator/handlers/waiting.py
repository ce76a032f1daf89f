"""Objects that wait for another (TrainingRuns and TrainingSweeps for their Experiment):
what they wait for, and waking them when it is ready."""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from mlflow_operator.api.experiment import ExperimentStatus
from mlflow_operator.caches.watches import Waiting
from mlflow_operator.handlers.common import Kind, reconcile_and_report

# How a kind starts its objects that wait for another (an Experiment that became Ready).
Wake = Callable[[Any, Any, Any], Awaitable[None]]

async def wake_waiting(kind: Kind[Any, Any], waiting: Waiting, target: Any, memo: Any,
                       logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Reconcile the objects of `kind` waiting for `target` (an object whose watch event said
    it is ready for them)."""
    namespace = target["metadata"]["namespace"]
    for name, uid in waiting.waiting_for((namespace, target["metadata"]["name"])):
        await reconcile_and_report(kind, body={"metadata": {"namespace": namespace, "name": name, "uid": uid}},
                                   memo=memo, logger=logger)

def waiting_for_experiment(body: Any, started: bool) -> tuple[str, str] | None:
    """The Experiment an object that has not `started` yet waits for, by its experimentRef:
    its Ready status starts the object."""
    name = ((body.get("spec") or {}).get("experimentRef") or {}).get("name")
    if not name or started:
        return None
    return body["metadata"]["namespace"], name

def experiment_ready(body: Any) -> bool:
    status = ExperimentStatus.of(body)
    return bool(status.experiment_id) and status.is_true("Ready")
