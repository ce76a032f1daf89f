"""Experiment reconcile decisions: desired state + what MLflow has -> what to do. No I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mlflow_operator.api.common import NOTE_TAG, ObjectIdentity
from mlflow_operator.api.experiment import ExperimentSpec, default_experiment_name
from mlflow_operator.logic import ownership
from mlflow_operator.logic.conditions import ReconcileProblem, stalled
from mlflow_operator.logic.ownership import Relation
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.tracking.entities import ExperimentInfo


@dataclass(frozen=True)
class DesiredExperiment:
    name: str
    artifact_location: str | None
    # Tags the spec declares, the note included; ownership tags are separate.
    tags: dict[str, str]
    ownership: dict[str, str]

    @property
    def managed_keys(self) -> list[str]:
        return sorted(self.tags)


def desired_experiment(spec: ExperimentSpec, identity: ObjectIdentity, in_workspace: bool = False) -> DesiredExperiment:
    """`in_workspace`: the server keeps each namespace's experiments in its own MLflow
    workspace, so names need no namespace prefix and cannot collide with another's."""
    tags = dict(spec.tags)
    if spec.description:
        tags[NOTE_TAG] = spec.description
    if spec.name and not in_workspace:
        ownership.refuse_other_namespace_prefix(spec.name, identity.namespace, "spec.name")
    if spec.artifact_location and in_workspace:
        raise ReconcileProblem(stalled(
            Reason.INVALID_SPEC,
            "spec.artifactLocation cannot be set on a server with MLflow workspaces: the server places each "
            "workspace's artifacts itself; remove it",
        ))
    return DesiredExperiment(
        name=spec.name or default_experiment_name(identity.namespace, identity.name, in_workspace),
        artifact_location=spec.artifact_location,
        tags=tags,
        ownership=identity.tags(),
    )


BindKind = Literal["create", "use", "adopt", "restore"]


@dataclass(frozen=True)
class Binding:
    """Which MLflow experiment this object is bound to, and how it gets there."""

    kind: BindKind
    experiment: ExperimentInfo | None = None


def bind_known(experiment: ExperimentInfo | None, known_id: str, identity: ObjectIdentity) -> Binding:
    """The object already recorded `known_id`: use it, unless it was deleted or taken over.

    An experiment deleted by hand is reported, never silently recreated: recreating would
    scatter one object's runs over two experiments.
    """
    if experiment is None:
        raise ReconcileProblem(stalled(
            Reason.DELETED_IN_MLFLOW,
            f"MLflow experiment {known_id} no longer exists (deleted permanently outside the operator); "
            "delete and re-create this object to create a new experiment",
        ))
    if experiment.deleted:
        raise ReconcileProblem(stalled(
            Reason.DELETED_IN_MLFLOW,
            f"MLflow experiment {known_id} ({experiment.name!r}) was deleted outside the operator; restore it "
            f"in MLflow (mlflow experiments restore --experiment-id {known_id}) or delete and re-create this "
            "object to create a new experiment",
        ))
    if ownership.relation(experiment.tags, identity) in (Relation.OTHER_OBJECT, Relation.OTHER_NAMESPACE):
        raise ReconcileProblem(stalled(
            Reason.CONFLICT,
            f"MLflow experiment {known_id} is now tagged as owned by {ownership.describe_owner(experiment.tags)}",
        ))
    # Ours, or its ownership tags were removed by hand: they are set again.
    return Binding("use", experiment)


def bind_by_name(experiment: ExperimentInfo | None, name: str, identity: ObjectIdentity,
                 adopt: bool = False, owner_alive: bool = True) -> Binding:
    """No experiment recorded yet: create one, or adopt/restore the one of that name if allowed."""
    if experiment is None:
        return Binding("create")
    if ownership.relation(experiment.tags, identity) is Relation.OURS:
        # Ours: created by an earlier reconcile whose status update was lost.
        return Binding("restore" if experiment.deleted else "use", experiment)
    if experiment.deleted:
        raise ReconcileProblem(stalled(
            Reason.NAME_TAKEN_BY_DELETED_EXPERIMENT,
            f"a deleted MLflow experiment named {name!r} (id {experiment.experiment_id}) is in MLflow's trash; "
            "restore it in MLflow to adopt it, remove it for good (mlflow gc), or choose another spec.name",
        ))
    ownership.take_over(experiment.tags, identity, adopt, f"MLflow experiment {name!r} (id {experiment.experiment_id})",
                        owner_alive)
    return Binding("adopt", experiment)


def artifact_location_mismatch(desired: DesiredExperiment, experiment: ExperimentInfo) -> str | None:
    """Why an existing experiment cannot be adopted for this spec's artifactLocation."""
    if not desired.artifact_location or not experiment.artifact_location:
        return None
    if desired.artifact_location.rstrip("/") == experiment.artifact_location.rstrip("/"):
        return None
    return (
        f"MLflow experiment {experiment.name!r} stores artifacts at {experiment.artifact_location!r} but "
        f"spec.artifactLocation is {desired.artifact_location!r}; an artifact location cannot be changed: "
        "remove spec.artifactLocation or choose another spec.name"
    )


@dataclass(frozen=True)
class Change:
    action: Literal["rename", "set_tag", "delete_tag"]
    key: str = ""
    value: str = ""


@dataclass(frozen=True)
class Plan:
    changes: list[Change] = field(default_factory=list)

    @property
    def rename_to(self) -> str | None:
        return next((c.value for c in self.changes if c.action == "rename"), None)

    def describe(self) -> str:
        parts: list[str] = []
        if self.rename_to:
            parts.append(f"renamed to {self.rename_to!r}")
        set_keys = [c.key for c in self.changes if c.action == "set_tag"]
        deleted = [c.key for c in self.changes if c.action == "delete_tag"]
        if set_keys:
            parts.append("set " + ", ".join(describe_tag(k) for k in set_keys))
        if deleted:
            parts.append("removed " + ", ".join(describe_tag(k) for k in deleted))
        return "; ".join(parts)


def describe_tag(key: str) -> str:
    return "description" if key == NOTE_TAG else f"tag {key!r}"


def plan_updates(desired: DesiredExperiment, experiment: ExperimentInfo, previously_managed: set[str]) -> Plan:
    """Changes that bring the experiment to the spec. Only keys this object set earlier are removed."""
    changes: list[Change] = []
    if experiment.name != desired.name:
        changes.append(Change("rename", value=desired.name))
    for key, value in {**desired.ownership, **desired.tags}.items():
        if experiment.tags.get(key) != value:
            changes.append(Change("set_tag", key, value))
    for key in sorted(previously_managed - set(desired.tags) - set(desired.ownership)):
        if key in experiment.tags:
            changes.append(Change("delete_tag", key))
    return Plan(changes)
