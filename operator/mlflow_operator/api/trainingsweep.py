"""TrainingSweep: the typed spec, as the CRD in crds/trainingsweeps.yaml declares it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mlflow_operator.api.common import Model, StatusModel, TrackedStatus
from mlflow_operator.api.trainingrun import DistributedSpec, InExperiment, ModelVersionStatus, RegisterModelSpec

PLURAL = "trainingsweeps"
KIND = "TrainingSweep"

# On every trial (a TrainingRun the sweep owns): which sweep, which index. The parent run's
# id is an annotation, read only on TrainingRuns whose controller is a TrainingSweep.
LABEL_SWEEP = "mlflow.operator.dev/sweep"
LABEL_TRIAL = "mlflow.operator.dev/trial"
ANNOTATION_PARENT_RUN = "mlflow.operator.dev/parent-run-id"
# Set by the sweep on a trial it stops (median stopping, or too many failed trials): why.
# The trial's Job is then deleted and its run closed KILLED; the trial ends EarlyStopped.
ANNOTATION_STOP = "mlflow.operator.dev/stop"

# Trials a sweep may have: bounds its children, its status and the length of their names.
MAX_TRIALS = 1000


class SearchParameter(Model):
    """One searched parameter: a list of values, or a numeric range."""

    values: list[str] | None = None
    min: float | None = None
    max: float | None = None
    type: Literal["int", "float"] = "float"
    scale: Literal["linear", "log"] = "linear"
    # Grid points of a range (a grid over an int range without it takes every integer).
    steps: int | None = Field(default=None, ge=2)


class Algorithm(Model):
    # tpe: Bayesian (Optuna's TPE sampler), each trial suggested from the trials recorded so far.
    type: Literal["grid", "random", "tpe"] = "grid"
    seed: int | None = None


class EarlyStopping(Model):
    """Median stopping: a running trial whose best objective up to a step is worse than the
    median of the completed trials' best up to that step is stopped."""

    type: Literal["median"] = "median"
    min_trials_required: int = Field(default=3, alias="minTrialsRequired", ge=1)
    start_step: int = Field(default=0, alias="startStep", ge=0)


class Objective(Model):
    metric: str = Field(min_length=1)
    goal: Literal["maximize", "minimize"] = "maximize"


class TrainingSweepSpec(InExperiment):
    run_name: str | None = Field(default=None, alias="runName")
    description: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    parameters: dict[str, SearchParameter]
    algorithm: Algorithm = Field(default_factory=Algorithm)
    objective: Objective
    max_trials: int | None = Field(default=None, alias="maxTrials", ge=1, le=MAX_TRIALS)
    parallelism: int = Field(default=1, ge=1)
    max_failed_trials: int | None = Field(default=None, alias="maxFailedTrials", ge=0)
    template: dict[str, Any]
    backoff_limit: int = Field(default=0, alias="backoffLimit", ge=0)
    active_deadline_seconds: int | None = Field(default=None, alias="activeDeadlineSeconds", ge=1)
    register_best: RegisterModelSpec | None = Field(default=None, alias="registerBest")
    # Every trial runs on this many nodes (a distributed TrainingRun).
    distributed: DistributedSpec | None = None
    early_stopping: EarlyStopping | None = Field(default=None, alias="earlyStopping")

    @classmethod
    def parse(cls, spec: Any) -> "TrainingSweepSpec":
        return cls.model_validate(dict(spec or {}))


class TrialCounts(StatusModel):
    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    early_stopped: int = 0
    progress: str = ""


class BestTrialStatus(StatusModel):
    name: str = ""
    index: int = 0
    run_id: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    metric: str = ""
    value: float | None = None


class TrainingSweepStatus(TrackedStatus):
    phase: str | None = None
    parent_run_id: str | None = None
    experiment_id: str | None = None
    experiment_name: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    run_status: str | None = None
    trials: TrialCounts | None = None
    best_trial: BestTrialStatus | None = None
    model_version: ModelVersionStatus | None = None
