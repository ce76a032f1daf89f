"""kopf wiring for TrainingSweep: its own events, its trials' phase changes (the watch of
TrainingRuns the operator already has), a timer as a safety net while it runs, and deletion."""

from __future__ import annotations

from typing import Any

import kopf

from mlflow_operator.api.common import GROUP, VERSION
from mlflow_operator.api.trainingrun import PLURAL as TRAINING_RUNS
from mlflow_operator.api.trainingrun import TrainingRunStatus
from mlflow_operator.api.trainingsweep import KIND, LABEL_SWEEP, PLURAL, TrainingSweepStatus
from mlflow_operator.handlers.common import Kind, pending_until_started, reconcile_and_report, stalled_for
from mlflow_operator.handlers.lifecycle import register_lifecycle_kind
from mlflow_operator.handlers.objects import services_of
from mlflow_operator.handlers.waiting import waiting_for_experiment, wake_waiting
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.logic.trainingrun import is_closed
from mlflow_operator.logic.trainingsweep import controller_sweep
from mlflow_operator.reconcilers.trainingsweep import (
    kill_training_sweep,
    parse_spec,
    reconcile_training_sweep,
)
from mlflow_operator.runtime.config import OperatorConfig


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    # Changes, the refresh timer while open (what is left after an outage, a trial event
    # missed while the operator was down), deletion (closing the parent run).
    register_lifecycle_kind(registry, config, TRAINING_SWEEP, is_open=sweep_open)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="watch", registry=registry)
    async def training_sweep_seen(body: kopf.Body, memo: kopf.Memo, type: str | None = None, **_: Any) -> None:
        """A sweep not started yet waits for the Experiment it names, as a TrainingRun does."""
        metadata = body["metadata"]
        started = bool(TrainingSweepStatus.of(body).parent_run_id)
        waiting = None if type == "DELETED" else waiting_for_experiment(body, started)
        services_of(memo).caches.watched.sweeps_waiting_for_experiment.put(metadata["uid"], metadata["name"], waiting)

    @kopf.on.event(GROUP, VERSION, TRAINING_RUNS, id="trial", labels={LABEL_SWEEP: kopf.PRESENT}, registry=registry)
    async def trial_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, type: str | None = None,
                            **_: Any) -> None:
        """A trial's phase moved (or it is gone): its sweep may start the next trial or close."""
        sweep = controller_sweep(body["metadata"])
        if sweep is None:
            return
        seen: dict[str, str] = memo.setdefault("trial_phases", {})
        uid = body["metadata"]["uid"]
        phase = "Deleted" if type == "DELETED" else TrainingRunStatus.of(body).phase or "Pending"
        if seen.get(uid) == phase:
            return
        if phase == "Deleted":
            seen.pop(uid, None)
        else:
            seen[uid] = phase
        owner = {"metadata": {"namespace": body["metadata"]["namespace"], "name": sweep["name"], "uid": sweep["uid"]}}
        await _reconcile(owner, memo, logger, retry=None)


# Stalled for these, a sweep waits for a new object (its spec is immutable once started)
# or the operator's configuration: no timer.
WAITS_FOR_SPEC = (Reason.INVALID_SPEC, Reason.TRACKING_SERVER_NOT_ALLOWED, Reason.TRIAL_CONFLICT)


async def wake_training_sweeps(experiment: kopf.Body, memo: kopf.Memo, logger: Any) -> None:
    await wake_waiting(TRAINING_SWEEP, services_of(memo).caches.watched.sweeps_waiting_for_experiment, experiment, memo,
                       logger)


def sweep_open(body: kopf.Body, **_: Any) -> bool:
    status = TrainingSweepStatus.of(body)
    registers_model = (body.get("spec") or {}).get("registerBest") is not None
    return not is_closed(status, registers_model) and not stalled_for(status, WAITS_FOR_SPEC)


TRAINING_SWEEP = Kind(KIND, PLURAL, parse_spec, TrainingSweepStatus, reconcile_training_sweep, kill_training_sweep,
                      "closing the parent run", status_on_error=pending_until_started)


async def _reconcile(body: Any, memo: kopf.Memo, logger: Any, retry: int | None) -> None:
    await reconcile_and_report(TRAINING_SWEEP, body=body, memo=memo, logger=logger, retry=retry)
