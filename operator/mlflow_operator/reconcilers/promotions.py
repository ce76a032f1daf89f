"""Moving an alias, for any kind: the RegisteredModel's promotion policy decides whether the
version may take it, and every move leaves the audit record (version tags and an Event).
A RegisteredModel's aliases, a TrainingRun's registerModel.aliases and a TrainingSweep's
registerBest.aliases all go through here (DESIGN.md, promotion policy and audit)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from mlflow_operator.api.registeredmodel import PLURAL as REGISTERED_MODELS
from mlflow_operator.api.registeredmodel import (
    PromotionRule,
    RegisteredModelSpec,
    RegisteredModelStatus,
    default_model_name,
)
from mlflow_operator.gateways.protocols import MlflowApi
from mlflow_operator.logic import promotion
from mlflow_operator.logic import registeredmodel as model_logic
from mlflow_operator.reconcilers.common import EventSink, Services
from mlflow_operator.tracking.entities import ModelVersionInfo, RunInfo, TrackingTarget

EvidenceOf = Callable[[str], Awaitable[promotion.Evidence]]


def evidence_reader(services: Services, target: TrackingTarget, versions: list[ModelVersionInfo],
                    known_runs: dict[str, RunInfo] | None = None) -> EvidenceOf:
    """What the registry shows about a version (its tags, its source run's metrics), each
    source run read once."""
    by_version = {v.version: v for v in versions}
    runs: dict[str, RunInfo | None] = dict(known_runs or {})

    async def evidence(version: str) -> promotion.Evidence:
        found = by_version.get(version)
        run_id = found.run_id if found else None
        if run_id and run_id not in runs:
            runs[run_id] = await services.mlflow.get_run(target, run_id)
        run = runs.get(run_id) if run_id else None
        return promotion.Evidence(version, dict(found.tags) if found else {}, run_id,
                                  dict(run.metrics) if run is not None else None)

    return evidence


async def verdict(rule: PromotionRule, alias: str, version: str, holder: str | None,
                  evidence: EvidenceOf) -> str | None:
    """Why `version` may not take `alias` from `holder` under `rule`; None when it may."""
    found = promotion.evaluate(rule, await evidence(version), await evidence(holder) if holder else None)
    return None if found.passed else promotion.blocked_message(alias, version, found)


async def declared_rules(services: Services, namespace: str, model_name: str,
                         tracking_uri: str) -> dict[str, list[PromotionRule]]:
    """The promotion rules the RegisteredModels of `namespace` declare for `model_name` on this
    server, per alias (read fresh: a rule added a moment ago holds). Every one must pass."""
    rules: dict[str, list[PromotionRule]] = {}
    for body in await services.kube.list_objects(REGISTERED_MODELS, namespace):
        try:
            spec = RegisteredModelSpec.parse(body.get("spec"))
        except ValueError:
            continue
        name = spec.name or default_model_name(body["metadata"]["name"])
        pinned = RegisteredModelStatus.of(body).tracking_uri
        if name != model_name or (pinned and pinned != tracking_uri):
            continue
        for alias, rule in spec.promotion.items():
            rules.setdefault(alias, []).append(rule)
    return rules


@dataclass(frozen=True)
class AliasMoves:
    moved: tuple[str, ...]
    # Why each alias that stayed where it was did (promotion.blocked_message).
    blocked: tuple[str, ...]


async def move_aliases(services: Services, target: TrackingTarget, namespace: str, model_name: str,
                       aliases: list[str], version: ModelVersionInfo, holders: dict[str, str],
                       evidence: EvidenceOf, actor: promotion.Actor, event: EventSink) -> AliasMoves:
    """Point `aliases` at `version` where the namespace's promotion policy allows it, with the
    audit record of each move; the others stay where they are. `holders`: alias -> version now."""
    to_move = [alias for alias in aliases if holders.get(alias) != version.version]
    if not to_move:
        return AliasMoves((), ())
    rules = await declared_rules(services, namespace, model_name, target.uri)
    moved: list[str] = []
    blocked: list[str] = []
    for alias in to_move:
        holder = holders.get(alias)
        refusals = [why for rule in rules.get(alias, [])
                    if (why := await verdict(rule, alias, version.version, holder, evidence))]
        if refusals:
            blocked.append(refusals[0])
            continue
        await services.mlflow.set_alias(target, model_name, alias, version.version)
        change = model_logic.Change("set_alias", alias, version.version, previous=holder)
        await audit(services.mlflow, target, model_name, change, actor, event, [])
        moved.append(alias)
    return AliasMoves(tuple(moved), tuple(blocked))


async def audit(mlflow: MlflowApi, target: TrackingTarget, name: str, change: model_logic.Change,
                actor: promotion.Actor, event: EventSink, audited: list[dict[str, Any]]) -> None:
    """Record an alias or stage change on the version it is about (tags) and as an Event."""
    now = dt.datetime.now(dt.timezone.utc)
    source = promotion.describe_source(actor)
    if change.action == "set_alias":
        version, subject, previous = change.value, f"alias.{change.key}", change.previous
        text = (f"alias {change.key} moved to version {version}"
                + (f" from version {previous}" if previous else "") + f" by {actor.describe()}{source}")
        reason = "Promoted"
        audited.append({"alias": change.key, "version": version, "previousVersion": previous,
                        "at": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "by": actor.describe(),
                        "sourceRevision": actor.source.get("source-revision")})
    elif change.action == "delete_alias" and change.previous:
        version, subject, previous = change.previous, f"alias.{change.key}.removed", None
        text, reason = f"alias {change.key} removed from version {version} by {actor.describe()}{source}", "AliasRemoved"
    elif change.action == "transition":
        version, subject, previous = change.version, "stage", change.previous
        text = f"version {version} moved from stage {previous} to {change.value} by {actor.describe()}{source}"
        reason = "StageChanged"
    else:
        return
    for key, value in promotion.audit_tags(subject, actor, now, previous or "none").items():
        await mlflow.set_model_version_tag(target, name, version, key, value)
    event("Normal", reason, text)
