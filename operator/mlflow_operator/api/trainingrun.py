"""TrainingRun: the typed spec, as the CRD in crds/trainingruns.yaml declares it."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from mlflow_operator.api.common import MlflowName, Model, SpecTags, StatusModel, TrackedStatus, TrackingSpec

PLURAL = "trainingruns"
KIND = "TrainingRun"

# EarlyStopped: a sweep's trial that the sweep stopped (its run KILLED), not a failure.
TERMINAL_PHASES = ("Succeeded", "Failed", "EarlyStopped")

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


# Environment the operator sets in every container of a distributed run (logic.trainingrun);
# a template that sets one of these itself is refused at admission.
DISTRIBUTED_ENV = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "NODE_RANK", "RANK", "MLFLOW_SYSTEM_METRICS_NODE_ID")
DISTRIBUTED_ENV_PREFIX = "PET_"
DEFAULT_RENDEZVOUS_PORT = 29500


class DistributedSpec(Model):
    """One run on `nodes` pods: an Indexed Job whose completion index is the node rank."""

    nodes: int = Field(ge=1, le=1000)
    processes_per_node: int = Field(default=1, alias="processesPerNode", ge=1, le=1024)
    port: int = Field(default=DEFAULT_RENDEZVOUS_PORT, ge=1, le=65535)


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
    distributed: DistributedSpec | None = None
    # Create the Job suspended, for a queue (Kueue) or a person to resume it.
    suspend: bool = False

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


class NodeCounts(StatusModel):
    """A distributed run's nodes (ranks) by phase, from its Job's status."""

    total: int = 0
    pending: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    summary: str = ""


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
    nodes: NodeCounts | None = None
