"""RegisteredModel: the typed spec, as the CRD in crds/registeredmodels.yaml declares it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from mlflow_operator.api.common import MlflowName, Model, SpecTags, StatusModel, TrackedStatus, TrackingSpec

PLURAL = "registeredmodels"
KIND = "RegisteredModel"


def _version_text(value: Any) -> str:
    """YAML users write versions as 4 or "4"; MLflow speaks strings."""
    text = str(value).strip()
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{value!r} is not a version number")
    return str(int(text))


class VersionSpec(Model):
    version: str
    stage: Literal["None", "Staging", "Production", "Archived"] | None = None
    description: str | None = None
    tags: SpecTags = Field(default_factory=dict)

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, value: Any) -> str:
        return _version_text(value)


class MetricBound(Model):
    """Bounds on one metric of a version's source run (its latest value)."""

    min: float | None = None
    max: float | None = None


class NotWorseThanCurrent(Model):
    metric: str = Field(min_length=1, max_length=250)
    goal: Literal["maximize", "minimize"] = "maximize"


class PromotionRule(Model):
    """What a version must show before the operator moves an alias to it."""

    metrics: dict[str, MetricBound] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    not_worse_than_current: NotWorseThanCurrent | None = Field(default=None, alias="notWorseThanCurrent")


class RegisteredModelSpec(Model):
    name: MlflowName | None = Field(default=None, min_length=1, max_length=256)
    description: str | None = None
    tags: SpecTags = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict)
    versions: list[VersionSpec] = Field(default_factory=list)
    archive_existing_versions: bool = Field(default=False, alias="archiveExistingVersions")
    drift_policy: Literal["Enforce", "Observe"] = Field(default="Enforce", alias="driftPolicy")
    deletion_policy: Literal["Retain", "Delete"] = Field(default="Retain", alias="deletionPolicy")
    adopt: bool = False
    promotion: dict[str, PromotionRule] = Field(default_factory=dict)
    tracking: TrackingSpec | None = None

    @field_validator("aliases", mode="before")
    @classmethod
    def _aliases(cls, value: Any) -> dict[str, str]:
        return {str(alias): _version_text(version) for alias, version in dict(value or {}).items()}

    @classmethod
    def parse(cls, spec: Any) -> "RegisteredModelSpec":
        parsed = cls.model_validate(dict(spec or {}))
        if parsed.name and ("/" in parsed.name or ":" in parsed.name):
            raise ValueError("name cannot contain '/' or ':'")
        return parsed


def default_model_name(name: str) -> str:
    """MLflow name of a RegisteredModel without spec.name: its metadata.name (MLflow model
    names cannot contain '/', so the namespace cannot be part of it as for experiments)."""
    return name


class VersionStatus(StatusModel):
    version: str = ""
    stage: str | None = None
    aliases: list[str] = Field(default_factory=list)
    run_id: str | None = None
    source: str | None = None
    status: str | None = None
    description: str | None = None


class PromotionStatus(StatusModel):
    alias: str | None = None
    version: str | None = None
    previous_version: str | None = None
    at: str | None = None
    by: str | None = None
    source_revision: str | None = None


class RegisteredModelStatus(TrackedStatus):
    model_name: str | None = None
    version_count: int | None = None
    alias_summary: str | None = None
    aliases: dict[str, str] = Field(default_factory=dict)
    versions: list[VersionStatus] = Field(default_factory=list)
    last_promotion: PromotionStatus | None = None
    # What this object declared and set, so that it may later remove exactly that.
    managed_tags: list[str] = Field(default_factory=list)
    managed_aliases: list[str] = Field(default_factory=list)
    managed_version_tags: dict[str, list[str]] | None = None
    missing_versions: list[str] | None = None
