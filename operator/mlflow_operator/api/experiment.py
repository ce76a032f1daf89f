"""Experiment: the typed spec, as the CRD in crds/experiments.yaml declares it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from mlflow_operator.api.common import MlflowName, Model, SpecTags, TrackedStatus, TrackingSpec

PLURAL = "experiments"
KIND = "Experiment"


class ExperimentSpec(Model):
    name: MlflowName | None = Field(default=None, min_length=1, max_length=500)
    description: str | None = Field(default=None, max_length=20000)
    tags: SpecTags = Field(default_factory=dict)
    artifact_location: str | None = Field(default=None, alias="artifactLocation")
    deletion_policy: Literal["Retain", "Delete"] = Field(default="Retain", alias="deletionPolicy")
    adopt: bool = False
    tracking: TrackingSpec | None = None

    @classmethod
    def parse(cls, spec: Any) -> "ExperimentSpec":
        return cls.model_validate(dict(spec or {}))


def default_experiment_name(namespace: str, name: str, in_workspace: bool = False) -> str:
    """MLflow name of an Experiment without spec.name: unique per cluster, readable in the UI.
    In a namespace's own MLflow workspace the name alone is unique (decision 0025)."""
    return name if in_workspace else f"{namespace}/{name}"


class ExperimentStatus(TrackedStatus):
    experiment_id: str | None = None
    experiment_name: str | None = None
    lifecycle_stage: str | None = None
    artifact_location: str | None = None
    # The spec tag keys this object last set (removed from MLflow when the spec drops them).
    managed_tags: list[str] = Field(default_factory=list)
