"""Promotion policy and audit: whether a version may take an alias, and what the registry
records about each change the operator makes. No I/O."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Mapping

from mlflow_operator.api.registeredmodel import PromotionRule

AUDIT_PREFIX = "mlflow.operator.dev/"


@dataclass(frozen=True)
class Evidence:
    """What the registry shows about one version: its tags, and its source run's metrics
    (None when it has no source run or the run is gone)."""

    version: str
    tags: Mapping[str, str]
    run_id: str | None
    metrics: Mapping[str, float] | None


@dataclass(frozen=True)
class Verdict:
    failures: tuple[str, ...] = ()
    # Metric values seen, for the message and status.
    seen: Mapping[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


def evaluate(rule: PromotionRule, candidate: Evidence, current: Evidence | None) -> Verdict:
    """Every rule the candidate fails, in words that say what was seen and what is needed.

    `current` is the version holding the alias now (None: nobody). "Not worse than current"
    passes when there is no current holder, or it has no value of the metric to compare."""
    failures: list[str] = []
    seen: dict[str, float] = {}
    _check_metrics(rule, candidate, failures, seen)
    _check_tags(rule, candidate, failures)
    _check_not_worse(rule, candidate, current, failures, seen)
    return Verdict(tuple(dict.fromkeys(failures)), seen)


def _check_metrics(rule: PromotionRule, candidate: Evidence, failures: list[str], seen: dict[str, float]) -> None:
    for name, bound in sorted(rule.metrics.items()):
        value = _metric(candidate, name, failures)
        if value is None:
            continue
        seen[name] = value
        if bound.min is not None and value < bound.min:
            failures.append(f"metric {name} is {value:g}, below the minimum {bound.min:g}")
        if bound.max is not None and value > bound.max:
            failures.append(f"metric {name} is {value:g}, above the maximum {bound.max:g}")


def _check_tags(rule: PromotionRule, candidate: Evidence, failures: list[str]) -> None:
    for key, wanted in sorted(rule.tags.items()):
        actual = candidate.tags.get(key)
        if actual != wanted:
            state = "missing" if actual is None else f"{actual!r}"
            failures.append(f"tag {key} is {state}, needs {wanted!r}")


def _check_not_worse(rule: PromotionRule, candidate: Evidence, current: Evidence | None, failures: list[str],
                     seen: dict[str, float]) -> None:
    comparison = rule.not_worse_than_current
    if comparison is None or current is None or current.version == candidate.version:
        return
    value = seen[comparison.metric] if comparison.metric in seen else _metric(candidate, comparison.metric, failures)
    held = (current.metrics or {}).get(comparison.metric)
    if value is None:
        return
    seen[comparison.metric] = value
    if held is not None and (value < held if comparison.goal == "maximize" else value > held):
        failures.append(f"metric {comparison.metric} is {value:g}, worse than {held:g} of version "
                        f"{current.version}, which holds the alias now ({comparison.goal})")


def _metric(evidence: Evidence, name: str, failures: list[str]) -> float | None:
    if evidence.run_id is None:
        failures.append(f"version {evidence.version} has no source run, so it has no metric {name}")
        return None
    if evidence.metrics is None:
        failures.append(f"the source run {evidence.run_id} of version {evidence.version} is gone")
        return None
    if name not in evidence.metrics:
        failures.append(f"the source run {evidence.run_id} has no metric {name}")
        return None
    return evidence.metrics[name]


def blocked_message(alias: str, version: str, verdict: Verdict) -> str:
    return f"alias {alias} stays off version {version}: " + "; ".join(verdict.failures)


# --------------------------------------------------------------------------- audit


@dataclass(frozen=True)
class Actor:
    """Who made a registry change: the object and its generation, and the GitOps source it
    carries, if any."""

    kind: str
    namespace: str
    name: str
    generation: int | None
    source: Mapping[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        generation = f" (generation {self.generation})" if self.generation is not None else ""
        return f"{self.kind} {self.namespace}/{self.name}{generation}"


def audit_tags(subject: str, actor: Actor, at: dt.datetime, previous: str | None) -> dict[str, str]:
    """Tags recording one change on the version it is about, under `mlflow.operator.dev/<subject>.`
    (`alias.champion`, `stage`): a version keeps the record of each alias it received."""
    prefix = f"{AUDIT_PREFIX}{subject}."
    tags = {
        f"{prefix}at": at.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        f"{prefix}by": actor.describe(),
        f"{prefix}previous": previous or "none",
    }
    tags.update({f"{prefix}{key}": value for key, value in actor.source.items()})
    return tags


def describe_source(actor: Actor) -> str:
    revision, repo = actor.source.get("source-revision"), actor.source.get("source-repo")
    if revision and repo:
        return f" (revision {revision} of {repo})"
    if revision:
        return f" (revision {revision})"
    return ""
