"""RegisteredModel decisions: what the registry should look like, what differs, what to
change, and what only this object may remove. No I/O."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.api.registeredmodel import RegisteredModelSpec, RegisteredModelStatus, default_model_name
from mlflow_operator.logic import ownership
from mlflow_operator.logic.conditions import ReconcileProblem, stalled
from mlflow_operator.logic.ownership import Relation
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.tracking.entities import ModelVersionInfo, RegisteredModelInfo

# status.versions lists the newest this many versions, and besides them only those that
# matter (aliased, in Staging or Production, declared in the spec): a model with thousands of
# versions keeps a small object. versionCount counts them all.
STATUS_RECENT_VERSIONS = 20
# A version's description in status is cut to this many characters (MLflow allows 5,000).
STATUS_DESCRIPTION_CHARS = 200
NOTABLE_STAGES = ("Staging", "Production")


@dataclass(frozen=True)
class DesiredVersion:
    version: str
    stage: str | None
    description: str | None
    tags: dict[str, str]


@dataclass(frozen=True)
class DesiredModel:
    name: str
    description: str | None
    tags: dict[str, str]
    ownership: dict[str, str]
    aliases: dict[str, str]
    versions: dict[str, DesiredVersion]
    archive_existing: bool


def desired_model(spec: RegisteredModelSpec, identity: ObjectIdentity) -> DesiredModel:
    return DesiredModel(
        name=spec.name or default_model_name(identity.name),
        description=spec.description,
        tags=dict(spec.tags),
        ownership=identity.tags(),
        aliases=dict(spec.aliases),
        versions={v.version: DesiredVersion(v.version, v.stage, v.description, dict(v.tags)) for v in spec.versions},
        archive_existing=spec.archive_existing_versions,
    )


@dataclass(frozen=True)
class Managed:
    """What this object set in MLflow before: the only things it may remove."""

    tags: frozenset[str] = frozenset()
    aliases: frozenset[str] = frozenset()
    version_tags: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_status(cls, status: RegisteredModelStatus) -> "Managed":
        return cls(
            tags=frozenset(status.managed_tags),
            aliases=frozenset(status.managed_aliases),
            version_tags={v: frozenset(keys) for v, keys in (status.managed_version_tags or {}).items()},
        )


BindKind = Literal["create", "use", "adopt"]


def bind(model: RegisteredModelInfo | None, name: str, identity: ObjectIdentity, known: bool,
         adopt: bool = False, owner_alive: bool = True) -> BindKind:
    """Create the model, use ours, or adopt one this namespace owns (or an unowned one with
    spec.adopt); never take another object's or another namespace's."""
    if model is None:
        if known:
            raise ReconcileProblem(stalled(
                Reason.DELETED_IN_MLFLOW,
                f"registered model {name!r} was deleted outside the operator (with all its versions); "
                "delete and re-create this object to create it again",
            ))
        return "create"
    if known and ownership.relation(model.tags, identity) in (Relation.NAMESPACE, Relation.UNOWNED):
        return "use"  # ours before: its ownership tags were removed by hand and are set again
    found = ownership.take_over(model.tags, identity, adopt, f"registered model {name!r}", owner_alive)
    return "use" if found is Relation.OURS else "adopt"


Action = Literal[
    "set_description", "set_tag", "delete_tag", "set_alias", "delete_alias",
    "transition", "set_version_description", "set_version_tag", "delete_version_tag",
]


@dataclass(frozen=True)
class Change:
    action: Action
    key: str = ""
    value: str = ""
    version: str = ""
    previous: str | None = None

    @property
    def target_version(self) -> str | None:
        """The model version this change is about, if any."""
        if self.action == "set_alias":
            return self.value
        return self.version or None

    def describe(self) -> str:
        if self.action == "set_description":
            return "description"
        if self.action == "set_tag":
            return f"tag {self.key!r}"
        if self.action == "delete_tag":
            return f"removed tag {self.key!r}"
        if self.action == "set_alias":
            origin = f" from version {self.previous}" if self.previous else ""
            return f"alias {self.key!r}{origin} to version {self.value}"
        if self.action == "delete_alias":
            return f"removed alias {self.key!r}"
        if self.action == "transition":
            return f"version {self.version} stage {self.previous} -> {self.value}"
        if self.action == "set_version_description":
            return f"version {self.version} description"
        if self.action == "set_version_tag":
            return f"version {self.version} tag {self.key!r}"
        return f"removed version {self.version} tag {self.key!r}"


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    # Declared versions that do not exist (yet), and what declares them.
    missing: dict[str, list[str]] = field(default_factory=dict)
    managed: Managed = field(default_factory=Managed)

    def describe(self) -> str:
        return "; ".join(change.describe() for change in self.changes)

    def describe_missing(self) -> str:
        parts = [f"version {version} ({', '.join(needs)})" for version, needs in sorted(self.missing.items(),
                                                                                         key=lambda i: int(i[0]))]
        return "declared but not in MLflow yet: " + "; ".join(parts)


def plan(desired: DesiredModel, model: RegisteredModelInfo, versions: list[ModelVersionInfo],
         managed: Managed) -> Plan:
    existing = {v.version: v for v in versions}
    missing: dict[str, list[str]] = defaultdict(list)
    changes = _model_changes(desired, model, managed)
    alias_changes, managed_aliases = _alias_changes(desired, model, existing, managed, missing)
    version_changes, managed_version_tags = _version_changes(desired, existing, managed, missing)
    return Plan(
        changes=changes + alias_changes + version_changes,
        missing=dict(missing),
        managed=Managed(frozenset(desired.tags), frozenset(managed_aliases), managed_version_tags),
    )


def _model_changes(desired: DesiredModel, model: RegisteredModelInfo, managed: Managed) -> list[Change]:
    """The model's description and tags; managed tags no longer declared are removed."""
    changes: list[Change] = []
    if desired.description is not None and model.description != desired.description:
        changes.append(Change("set_description", value=desired.description))
    for key, value in {**desired.ownership, **desired.tags}.items():
        if model.tags.get(key) != value:
            changes.append(Change("set_tag", key, value))
    for key in sorted(managed.tags - set(desired.tags) - set(desired.ownership)):
        if key in model.tags:
            changes.append(Change("delete_tag", key))
    return changes


def _alias_changes(desired: DesiredModel, model: RegisteredModelInfo, existing: dict[str, ModelVersionInfo],
                   managed: Managed, missing: dict[str, list[str]]) -> tuple[list[Change], set[str]]:
    """Aliases moved to their declared versions (those that exist), and the ones now managed."""
    changes: list[Change] = []
    managed_aliases = set(managed.aliases & set(desired.aliases))
    for alias, version in sorted(desired.aliases.items()):
        if version not in existing:
            missing[version].append(f"alias {alias}")
            continue
        managed_aliases.add(alias)
        if model.aliases.get(alias) != version:
            changes.append(Change("set_alias", alias, version, previous=model.aliases.get(alias)))
    for alias in sorted(managed.aliases - set(desired.aliases)):
        if alias in model.aliases:
            changes.append(Change("delete_alias", alias, previous=model.aliases[alias]))
    return changes, managed_aliases


def _version_changes(desired: DesiredModel, existing: dict[str, ModelVersionInfo], managed: Managed,
                     missing: dict[str, list[str]]) -> tuple[list[Change], dict[str, frozenset[str]]]:
    """Stages, descriptions and tags of declared versions, and the version tags now managed."""
    changes: list[Change] = []
    managed_version_tags: dict[str, frozenset[str]] = {}
    for version, declared in sorted(desired.versions.items(), key=lambda i: int(i[0])):
        current = existing.get(version)
        if current is None:
            missing[version].append("spec.versions")
            if version in managed.version_tags:
                managed_version_tags[version] = managed.version_tags[version]
            continue
        changes += _declared_version_changes(version, declared, current, managed.version_tags.get(version))
        if declared.tags:
            managed_version_tags[version] = frozenset(declared.tags)
    for version, keys in managed.version_tags.items():
        if version not in desired.versions and version in existing:
            changes += [Change("delete_version_tag", key, version=version)
                        for key in sorted(keys) if key in existing[version].tags]
    return changes, managed_version_tags


def _declared_version_changes(version: str, declared: DesiredVersion, current: ModelVersionInfo,
                              managed_tags: frozenset[str] | None) -> list[Change]:
    changes: list[Change] = []
    if declared.stage and current.stage != declared.stage:
        changes.append(Change("transition", value=declared.stage, version=version, previous=current.stage))
    if declared.description is not None and current.description != declared.description:
        changes.append(Change("set_version_description", value=declared.description, version=version))
    for key, value in declared.tags.items():
        if current.tags.get(key) != value:
            changes.append(Change("set_version_tag", key, value, version))
    for key in sorted((managed_tags or frozenset()) - set(declared.tags)):
        if key in current.tags:
            changes.append(Change("delete_version_tag", key, version=version))
    return changes


def status_view(model: RegisteredModelInfo, versions: list[ModelVersionInfo],
                declared: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The registry as `kubectl get -o yaml` should show it. `versions`: lowest number first;
    `declared`: the version numbers the spec names."""
    aliases_by_version: dict[str, list[str]] = defaultdict(list)
    for alias, version in model.aliases.items():
        aliases_by_version[version].append(alias)
    recent = {v.version for v in versions[-STATUS_RECENT_VERSIONS:]}
    shown = [v for v in versions if v.version in recent or v.version in aliases_by_version
             or v.version in declared or v.stage in NOTABLE_STAGES]
    return {
        "modelName": model.name,
        "versionCount": len(versions),
        "aliases": dict(sorted(model.aliases.items())),
        "aliasSummary": ",".join(f"{a}={v}" for a, v in sorted(model.aliases.items())) or None,
        "versions": [
            {
                "version": v.version,
                "stage": v.stage,
                "aliases": sorted(aliases_by_version.get(v.version, [])),
                "runId": v.run_id,
                "source": v.source,
                "status": v.status,
                "description": (v.description or "")[:STATUS_DESCRIPTION_CHARS] or None,
            }
            for v in shown
        ],
    }


def managed_status(managed: Managed) -> dict[str, Any]:
    return {
        "managedTags": sorted(managed.tags),
        "managedAliases": sorted(managed.aliases),
        "managedVersionTags": {v: sorted(keys) for v, keys in sorted(managed.version_tags.items())} or None,
    }
