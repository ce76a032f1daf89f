"""Status conditions in the standard Kubernetes shape, computed so that kstatus (Flux),
Argo CD and `kubectl wait --for=condition=Ready` all read them the same way:

- Ready=True                       the object is in sync with MLflow;
- Ready=False, Reconciling=True    in progress or waiting on something that will resolve
                                   by itself (an outage, a Secret not created yet);
- Ready=False, Stalled=True        needs a person: a conflict, an invalid spec, an
                                   experiment deleted by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from mlflow_operator.logic import timestamps

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"

State = Literal["ready", "progressing", "stalled"]


@dataclass(frozen=True)
class Outcome:
    """How one reconcile ended, as the user should see it."""

    state: State
    reason: str
    message: str
    # Further condition types to set, e.g. {"VersionNotFound": ("True", reason, message)}.
    extra: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    # Progress that something else continues (a watch, the drift pass): kopf need not retry.
    awaited: bool = False
    # Progress that is expected rather than a problem: its Event is Normal, not Warning.
    expected: bool = False

    @property
    def is_ready(self) -> bool:
        return self.state == "ready"


ExtraConditions = Mapping[str, tuple[str, str, str]]


def ready(reason: str, message: str, *, extra: ExtraConditions | None = None) -> Outcome:
    return Outcome("ready", reason, message, dict(extra or {}))


def progressing(reason: str, message: str, *, awaited: bool = False, expected: bool = False,
                extra: ExtraConditions | None = None) -> Outcome:
    return Outcome("progressing", reason, message, dict(extra or {}), awaited=awaited, expected=expected)


def stalled(reason: str, message: str, *, extra: ExtraConditions | None = None) -> Outcome:
    return Outcome("stalled", reason, message, dict(extra or {}))


class ReconcileProblem(Exception):
    """Raised by reconcile logic to stop with a given outcome (not a crash)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(f"{outcome.reason}: {outcome.message}")
        self.outcome = outcome




def set_condition(
    conditions: list[dict[str, Any]], type_: str, status: str, reason: str, message: str,
    generation: int | None, now: str,
) -> list[dict[str, Any]]:
    """Return conditions with `type_` set; lastTransitionTime moves only when status changes."""
    result = [dict(c) for c in conditions if c.get("type") != type_]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = previous["lastTransitionTime"] if previous and previous.get("status") == status else now
    condition: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message[:32768],
        "lastTransitionTime": transition,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    return result


def remove_condition(conditions: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    return [dict(c) for c in conditions if c.get("type") != type_]


def apply_outcome(
    conditions: list[dict[str, Any]] | None, outcome: Outcome, generation: int | None,
    now: str | None = None, managed_extra: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """The conditions after `outcome`: Ready, Reconciling and Stalled, plus `extra`.

    Types in `managed_extra` that the outcome does not mention are removed, so a condition
    such as VersionNotFound disappears once its cause is gone.
    """
    now = now or timestamps.now_rfc3339()
    result = list(conditions or [])
    is_ready = outcome.state == "ready"
    result = set_condition(result, READY, "True" if is_ready else "False", outcome.reason, outcome.message,
                           generation, now)
    if outcome.state == "progressing":
        result = set_condition(result, RECONCILING, "True", outcome.reason, outcome.message, generation, now)
    else:
        result = set_condition(result, RECONCILING, "False", outcome.reason,
                               "Reconciled" if is_ready else "Not progressing until the problem is fixed",
                               generation, now)
    if outcome.state == "stalled":
        result = set_condition(result, STALLED, "True", outcome.reason, outcome.message, generation, now)
    else:
        result = set_condition(result, STALLED, "False", outcome.reason, "Not stalled", generation, now)
    for type_, (status, reason, message) in outcome.extra.items():
        result = set_condition(result, type_, status, reason, message, generation, now)
    for type_ in managed_extra:
        if type_ not in outcome.extra:
            result = remove_condition(result, type_)
    order = {READY: 0, RECONCILING: 1, STALLED: 2}
    return sorted(result, key=lambda c: (order.get(c["type"], 3), c["type"]))


def condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def changed_reason(before: list[dict[str, Any]] | None, after: list[dict[str, Any]]) -> bool:
    """Whether Ready's status or reason changed: worth an Event, unlike a repeated failure."""
    old, new = condition(before, READY), condition(after, READY)
    if old is None or new is None:
        return True
    return (old.get("status"), old.get("reason")) != (new.get("status"), new.get("reason"))
