"""TrainingSweep decisions: which parameters trial i has, which trials to start next, when
the sweep is over and which trial is best. No I/O: the reconciler gathers and executes.

Trial i is a pure function of (spec, i, seed source), so a restart, a second replica or
a re-applied object never turns trial i into a different trial.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping

from mlflow_operator.api.common import API_VERSION, NOTE_TAG, ObjectIdentity
from mlflow_operator.api.trainingrun import TERMINAL_PHASES, TrainingRunStatus
from mlflow_operator.api.trainingsweep import (
    ANNOTATION_PARENT_RUN,
    ANNOTATION_STOP,
    KIND,
    LABEL_SWEEP,
    LABEL_TRIAL,
    MAX_TRIALS,
    SearchParameter,
    TrainingSweepSpec,
    TrialCounts,
)
from mlflow_operator.logic.conditions import ReconcileProblem, stalled
from mlflow_operator.logic.provenance import SOURCE_REPO_ANNOTATION, SOURCE_REVISION_ANNOTATION
from mlflow_operator.logic.queueing import queue_labels
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.search import tpe

# Tags on the parent run (the `mlflow.operator.dev/` prefix is the operator's, as for audit tags).
TAG_SEARCH_SPACE = "mlflow.operator.dev/search-space"
TAG_BEST_TRIAL = "mlflow.operator.dev/best-trial"
TAG_BEST_RUN = "mlflow.operator.dev/best-run-id"
# Tags on a trial's run: MLflow's own nesting tag, and which sweep and index it belongs to.
TAG_PARENT_RUN = "mlflow.parentRunId"
TAG_SWEEP = "mlflow.operator.dev/sweep"
TAG_TRIAL = "mlflow.operator.dev/trial"


def invalid(message: str) -> ReconcileProblem:
    return ReconcileProblem(stalled(Reason.INVALID_SPEC, message))


# --------------------------------------------------------------------------- search space


def format_value(value: float, type_: str) -> str:
    """MLflow params are strings: ints without a point, floats with six significant digits
    (so a grid's 0.30000000000000004 is written 0.3)."""
    return str(int(round(value))) if type_ == "int" else format(value, ".6g")


def _range_points(param: SearchParameter, count: int) -> list[float]:
    assert param.min is not None and param.max is not None
    low, high = param.min, param.max
    if count == 1 or low == high:
        return [low]
    if param.scale == "log":
        a, b = math.log(low), math.log(high)
        return [math.exp(a + (b - a) * i / (count - 1)) for i in range(count)]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def grid_axis(name: str, param: SearchParameter) -> list[str]:
    """The values a grid takes for one parameter, in order, without repeats."""
    if param.values is not None:
        return list(dict.fromkeys(param.values))
    if param.min is None or param.max is None:
        raise invalid(f"parameters.{name}: set either values or min and max")
    if param.steps is None:
        if param.type != "int" or param.scale != "linear":
            raise invalid(f"parameters.{name}: a grid over a {param.type} {param.scale} range needs steps "
                          "(how many points to try)")
        count = int(param.max) - int(param.min) + 1
        if count > MAX_TRIALS:
            raise invalid(f"parameters.{name}: the range has {count} integers; set steps")
        return [str(v) for v in range(int(param.min), int(param.max) + 1)]
    return list(dict.fromkeys(format_value(v, param.type) for v in _range_points(param, param.steps)))


def _random_value(rng: random.Random, param: SearchParameter) -> str:
    if param.values is not None:
        return rng.choice(param.values)
    assert param.min is not None and param.max is not None
    low, high = param.min, param.max
    if param.scale == "log":
        drawn = math.exp(rng.uniform(math.log(low), math.log(high)))
    elif param.type == "int":
        return str(rng.randint(int(low), int(high)))
    else:
        drawn = rng.uniform(low, high)
    return format_value(min(max(drawn, low), high), param.type)


def trial_count(spec: TrainingSweepSpec) -> int:
    """How many trials the sweep has: the grid's size (at most maxTrials), or maxTrials."""
    if spec.algorithm.type in ("random", "tpe"):
        if spec.max_trials is None:
            raise invalid(f"a {spec.algorithm.type} search needs maxTrials")
        if spec.algorithm.type == "tpe":
            for name, param in spec.parameters.items():
                if param.values is None and (param.min is None or param.max is None):
                    raise invalid(f"parameters.{name}: set either values or min and max")
        return spec.max_trials
    size = 1
    for name in sorted(spec.parameters):
        size *= len(grid_axis(name, spec.parameters[name]))
    if spec.max_trials is not None:
        return min(size, spec.max_trials)
    if size > MAX_TRIALS:
        raise invalid(f"the grid has {size} points, more than {MAX_TRIALS}; set maxTrials to run the first ones")
    return size


def seed_source(spec: TrainingSweepSpec, uid: str) -> str:
    """What a random or TPE search is seeded from: spec.algorithm.seed, or the object's uid."""
    return str(spec.algorithm.seed) if spec.algorithm.seed is not None else uid


def observations(spec: TrainingSweepSpec, trials: Mapping[int, "TrialView"],
                 suggested: Mapping[int, Mapping[str, str]] | None = None) -> list[tpe.Observation]:
    """What a Bayesian search learns from: every recorded trial in index order (its searched
    values; the objective's final value if it succeeded with one, failed otherwise, running
    while it has not ended), and the trials suggested in this pass, not created yet, as running."""
    names = set(spec.parameters)
    seen: list[tpe.Observation] = []
    for index in sorted(trials):
        trial = trials[index]
        values = {k: v for k, v in trial.params.items() if k in names}
        objective = trial.metrics.get(spec.objective.metric) if trial.phase == "Succeeded" else None
        state: tpe.TrialState = "running" if not trial.ended else "complete" if objective is not None else "failed"
        seen.append(tpe.Observation(values, state, objective))
    for index in sorted(suggested or {}):
        seen.append(tpe.Observation(dict(suggested[index]), "running"))  # type: ignore[index]
    return seen


def searched_values(spec: TrainingSweepSpec, index: int, seed: str,
                    history: list[tpe.Observation] | None = None) -> dict[str, str]:
    """Trial `index`'s values of the searched parameters. Grid: the index-th point of the
    grid, the last parameter (by name) varying fastest. Random: drawn from a generator seeded
    with (seed, index) alone, so trials do not depend on each other or on their order. TPE:
    suggested from the trials recorded so far (`history`, see `observations`) with a sampler
    seeded with (seed, index); CPU work, run off the event loop."""
    names = sorted(spec.parameters)
    if spec.algorithm.type == "tpe":
        suggested = tpe.suggest(spec.parameters, spec.objective.goal, seed, index, history or [])
        return {name: suggested[name] if isinstance(suggested[name], str)
                else format_value(suggested[name], spec.parameters[name].type) for name in names}
    if spec.algorithm.type == "random":
        rng = random.Random(f"{seed}/{index}")  # a str seed is hashed (sha512): stable everywhere
        return {name: _random_value(rng, spec.parameters[name]) for name in names}
    axes = [grid_axis(name, spec.parameters[name]) for name in names]
    values: dict[str, str] = {}
    rest = index
    for name, axis in reversed(list(zip(names, axes, strict=True))):
        rest, position = divmod(rest, len(axis))
        values[name] = axis[position]
    return {name: values[name] for name in names}


def trial_params(spec: TrainingSweepSpec, index: int, seed: str,
                 history: list[tpe.Observation] | None = None) -> dict[str, str]:
    """What trial `index` runs with: the fixed params and its searched values."""
    return {**spec.params, **searched_values(spec, index, seed, history)}


# --------------------------------------------------------------------------- trials


def trial_name(sweep: str, index: int) -> str:
    return f"{sweep}-{index}"


@dataclass(frozen=True)
class TrialView:
    """A trial as its TrainingRun's status shows it."""

    index: int
    name: str
    phase: str  # Pending | Running | Succeeded | Failed | EarlyStopped
    run_id: str | None = None
    uid: str = ""
    params: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    job_uid: str | None = None
    # Why its sweep stopped it (its stop annotation), if it did.
    stop: str | None = None

    @property
    def ended(self) -> bool:
        return self.phase in TERMINAL_PHASES


def trial_view(body: Mapping[str, Any]) -> TrialView | None:
    """A child TrainingRun as a trial, or None if it carries no trial index."""
    metadata, status = body["metadata"], TrainingRunStatus.of(body)
    raw_index = (metadata.get("labels") or {}).get(LABEL_TRIAL, "")
    if not raw_index.isdigit():
        return None
    return TrialView(index=int(raw_index), name=metadata["name"], phase=status.phase or "Pending",
                     run_id=status.run_id, uid=metadata.get("uid", ""),
                     params=dict((body.get("spec") or {}).get("params") or {}), metrics=dict(status.metrics),
                     job_uid=status.job_uid, stop=(metadata.get("annotations") or {}).get(ANNOTATION_STOP))


@dataclass(frozen=True)
class Counts:
    total: int
    pending: int
    running: int
    succeeded: int
    failed: int
    early_stopped: int = 0

    def as_status(self) -> TrialCounts:
        done = self.succeeded + self.failed + self.early_stopped
        return TrialCounts(total=self.total, pending=self.pending, running=self.running, succeeded=self.succeeded,
                           failed=self.failed, early_stopped=self.early_stopped, progress=f"{done}/{self.total}")


@dataclass(frozen=True)
class Plan:
    """What the sweep does next: the trials to create now, and whether it is over."""

    create: list[int]
    counts: Counts
    over: bool
    # Trials started and not ended, those created now included: never more than parallelism.
    unfinished: int
    # Why no more trials start although some never ran (too many failures), or None.
    stopped_because: str | None = None


def plan(total: int, trials: Mapping[int, TrialView], parallelism: int, max_failed: int | None) -> Plan:
    """Start the lowest indices not created yet while fewer than `parallelism` trials are
    unfinished; stop starting new ones once more than `max_failed` have failed. Over when
    every trial has ended, or when it stopped and the unfinished ones have ended."""
    present = {i: t for i, t in trials.items() if i < total}
    unfinished = sum(1 for t in present.values() if not t.ended)
    running = sum(1 for t in present.values() if t.phase == "Running")
    succeeded = sum(1 for t in present.values() if t.phase == "Succeeded")
    failed = sum(1 for t in present.values() if t.phase == "Failed")
    early_stopped = sum(1 for t in present.values() if t.phase == "EarlyStopped")
    stopped_because = None
    if max_failed is not None and failed > max_failed:
        stopped_because = f"{failed} trials failed, more than maxFailedTrials ({max_failed})"
    create: list[int] = []
    if stopped_because is None:
        free = max(0, parallelism - unfinished)
        create = [i for i in range(total) if i not in present][:free]
    counts = Counts(total=total, pending=total - running - succeeded - failed - early_stopped, running=running,
                    succeeded=succeeded, failed=failed, early_stopped=early_stopped)
    not_started = total - len(present) - len(create)
    over = unfinished == 0 and not create and (not_started == 0 or stopped_because is not None)
    return Plan(create=create, counts=counts, over=over, unfinished=unfinished + len(create),
                stopped_because=stopped_because)


History = list[tuple[int, float]]  # (step, value) of one metric, as MLflow logged it


def _best_up_to(history: History, step: int, goal: str) -> float | None:
    values = [v for s, v in history if s <= step and not math.isnan(v)]
    if not values:
        return None
    return max(values) if goal == "maximize" else min(values)


def median_stops(running: Mapping[int, History], completed: Mapping[int, History], goal: str,
                 min_trials: int, start_step: int) -> dict[int, str]:
    """Median stopping: which running trials to stop, and why. A running trial at step s
    (its last logged step, at least `start_step`) is stopped when its best objective up to s
    is worse than the median of the completed trials' best up to s, and at least
    `min_trials` completed trials logged the objective by s."""
    stops: dict[int, str] = {}
    for index, history in sorted(running.items()):
        steps = [s for s, v in history if not math.isnan(v)]
        if not steps or max(steps) < start_step:
            continue
        step = max(steps)
        own = _best_up_to(history, step, goal)
        others = [b for b in (_best_up_to(h, step, goal) for h in completed.values()) if b is not None]
        if own is None or len(others) < min_trials:
            continue
        others.sort()
        middle = len(others) // 2
        median = others[middle] if len(others) % 2 else (others[middle - 1] + others[middle]) / 2
        if (own < median) if goal == "maximize" else (own > median):
            stops[index] = (f"median stopping: best objective {own:.6g} by step {step} is worse than the median "
                            f"{median:.6g} of {len(others)} completed trials by that step")
    return stops


def best_trial(trials: Mapping[int, TrialView], metric: str, goal: str) -> TrialView | None:
    """The succeeded trial with the best final value of `metric` (the lowest index on a tie)."""
    scored = [t for t in trials.values() if t.phase == "Succeeded" and isinstance(t.metrics.get(metric), (int, float))
              and not math.isnan(t.metrics[metric])]
    if not scored:
        return None
    sign = -1.0 if goal == "maximize" else 1.0
    return min(scored, key=lambda t: (sign * t.metrics[metric], t.index))


# --------------------------------------------------------------------------- objects and runs


def trial_body(spec: TrainingSweepSpec, identity: ObjectIdentity, metadata: Mapping[str, Any], index: int,
               params: dict[str, str], parent_run_id: str) -> dict[str, Any]:
    """Trial `index` as a TrainingRun owned by the sweep: the sweep's template and experiment,
    its params, nested under the parent run (the annotation) and labelled for `kubectl get -l`."""
    child: dict[str, Any] = {
        "params": params,
        "runName": f"{spec.run_name or identity.name}-{index}",
        "primaryMetric": spec.objective.metric,
        "description": f"Trial {index} of TrainingSweep {identity.name}",
        "template": spec.template,
        "backoffLimit": spec.backoff_limit,
    }
    if spec.experiment_ref is not None:
        child["experimentRef"] = {"name": spec.experiment_ref.name}
    else:
        child["experimentName"] = spec.experiment_name
    if spec.active_deadline_seconds is not None:
        child["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.distributed is not None:
        child["distributed"] = spec.distributed.model_dump(by_alias=True)
    if spec.tracking is not None:
        child["tracking"] = spec.tracking.model_dump(by_alias=True, exclude_none=True)
    # The GitOps source travels with the trial (its run gets the source tags); Argo CD's
    # tracking id does not, or Argo CD would take the trial for one of its own and prune it.
    annotations = {key: value for key, value in (metadata.get("annotations") or {}).items()
                   if key in (SOURCE_REPO_ANNOTATION, SOURCE_REVISION_ANNOTATION)}
    annotations[ANNOTATION_PARENT_RUN] = parent_run_id
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingRun",
        "metadata": {
            "name": trial_name(identity.name, index),
            "namespace": identity.namespace,
            "labels": {**queue_labels(metadata), LABEL_SWEEP: identity.name, LABEL_TRIAL: str(index),
                       "app.kubernetes.io/managed-by": "mlflow-operator"},
            "annotations": annotations,
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": KIND, "name": identity.name, "uid": identity.uid,
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": child,
    }


def controller_sweep(metadata: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The TrainingSweep that controls an object (its controller ownerReference), if any."""
    for ref in metadata.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION:
            return ref
    return None


def trial_run_tags(metadata: Mapping[str, Any]) -> dict[str, str]:
    """A trial's run tags: nested under its sweep's parent run. Only a TrainingRun that a
    TrainingSweep controls is nested (ownerReferences stay within a namespace); any other
    TrainingRun's annotation is ignored."""
    sweep = controller_sweep(metadata)
    parent = (metadata.get("annotations") or {}).get(ANNOTATION_PARENT_RUN, "")
    if sweep is None or not parent.isalnum() or len(parent) > 64:
        return {}
    return {TAG_PARENT_RUN: parent, TAG_SWEEP: str(sweep.get("name", "")),
            TAG_TRIAL: (metadata.get("labels") or {}).get(LABEL_TRIAL, "")}


def parent_run_tags(spec: TrainingSweepSpec, identity: ObjectIdentity) -> dict[str, str]:
    search_space = {
        "algorithm": spec.algorithm.model_dump(exclude_none=True),
        "objective": spec.objective.model_dump(),
        "parameters": {name: p.model_dump(exclude_none=True) for name, p in sorted(spec.parameters.items())},
    }
    tags = {**identity.tags(), TAG_SEARCH_SPACE: json.dumps(search_space, sort_keys=True)[:8000]}
    if spec.description:
        tags[NOTE_TAG] = spec.description
    return tags
