"""TrainingRun: the typed spec, as the CRD in crds/trainingruns.yaml declares it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from mlflow_operator.api.common import MlflowName, Model, SpecTags, StatusModel, TrackedStatus, TrackingSpec

PLURAL = "trainingruns"
KIND = "TrainingRun"

TERMINAL_PHASES = ("Succeeded", "Failed")

# Labels on the Jobs the operator creates, so it can watch exactly those.
LABEL_TRAINING_RUN = "mlflow.operator.dev/training-run"
LABEL_RUN_ID = "mlflow.operator.dev/run-id"


class ExperimentRef(Model):
    name: str


class RegisterModelSpec(Model):
    name: MlflowName = Field(min_length=1, max_length=256)
    artifact_path: str = Field(default="model", alias="artifactPath")
    aliases: list[str] = Field(default_factory=list)
    tags: SpecTags = Field(default_factory=dict)


class InExperiment(Model):
    """What a kind that makes runs names: its experiment (an Experiment object or an MLflow
    name, exactly one) and its server. TrainingRun and TrainingSweep share it."""

    experiment_ref: ExperimentRef | None = Field(default=None, alias="experimentRef")
    experiment_name: MlflowName | None = Field(default=None, alias="experimentName")
    tracking: TrackingSpec | None = None

    @model_validator(mode="after")
    def _one_experiment(self) -> "InExperiment":
        if (self.experiment_ref is None) == (self.experiment_name is None):
            raise ValueError("set exactly one of experimentRef or experimentName")
        return self


class TrainingRunSpec(InExperiment):
    run_name: str | None = Field(default=None, alias="runName")
    description: str | None = None
    params: dict[str, str] = Field(default_factory=dict)
    tags: SpecTags = Field(default_factory=dict)
    primary_metric: str | None = Field(default=None, alias="primaryMetric")
    template: dict[str, Any]
    backoff_limit: int = Field(default=0, alias="backoffLimit", ge=0)
    active_deadline_seconds: int | None = Field(default=None, alias="activeDeadlineSeconds", ge=1)
    ttl_seconds_after_finished: int | None = Field(default=None, alias="ttlSecondsAfterFinished", ge=0)
    register_model: RegisterModelSpec | None = Field(default=None, alias="registerModel")

    @classmethod
    def parse(cls, spec: Any) -> "TrainingRunSpec":
        return cls.model_validate(dict(spec or {}))


class JobOutcomeStatus(StatusModel):
    """How the Job ended, recorded before the run is closed (the job-outcome checkpoint)."""

    phase: str = ""
    reason: str = ""
    message: str = ""


class ModelVersionStatus(StatusModel):
    name: str = ""
    version: str = ""
    uri: str = ""


class TrainingRunStatus(TrackedStatus):
    phase: str | None = None
    run_id: str | None = None
    experiment_id: str | None = None
    experiment_name: str | None = None
    job_name: str | None = None
    job_uid: str | None = None
    start_time: str | None = None
    completion_time: str | None = None
    run_status: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    primary_metric: str | None = None
    model_version: ModelVersionStatus | None = None
    job_outcome: JobOutcomeStatus | None = None
