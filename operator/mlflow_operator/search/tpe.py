"""Bayesian suggestions for a TrainingSweep: Optuna's TPE sampler through its ask-and-tell
interface, on an in-memory study rebuilt from the trials' recorded results each time.

Nothing is kept between suggestions: trial i's values are a function of the search space,
the goal, the seed, i and the trials recorded when i is created (their values and outcomes,
read from their TrainingRuns' status). Once trial i's TrainingRun exists its values are in
its spec, so a restart never changes a created trial, and a sweep whose trials run one at a
time (parallelism 1) suggests the same trials whenever it is applied with the same seed.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

from mlflow_operator.api.trainingsweep import SearchParameter

if TYPE_CHECKING:  # the library is imported when a suggestion is made, not with this module
    from optuna.distributions import BaseDistribution

TrialState = Literal["complete", "failed", "running"]


@dataclass(frozen=True)
class Observation:
    """A trial as the sampler sees it: its searched values, and how it ended (with the
    objective's final value when it completed)."""

    values: Mapping[str, str]
    state: TrialState
    objective: float | None = None


def _distribution(param: SearchParameter) -> "BaseDistribution":
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if param.values is not None:
        return CategoricalDistribution(list(dict.fromkeys(param.values)))
    assert param.min is not None and param.max is not None
    log = param.scale == "log"
    if param.type == "int":
        return IntDistribution(int(param.min), int(param.max), log=log)
    return FloatDistribution(param.min, param.max, log=log)


def _internal(distribution: "BaseDistribution", text: str) -> Any:
    """A recorded value (a string, as MLflow params are) as the distribution's value."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(distribution, CategoricalDistribution):
        return text
    low, high = distribution.low, distribution.high  # type: ignore[attr-defined]
    number = float(text)
    if isinstance(distribution, IntDistribution):
        return int(min(max(round(number), low), high))
    return min(max(number, low), high)


def _seed(seed: str, index: int) -> int:
    """Trial i's sampler seed, from the sweep's seed (or uid) and i: stable across processes."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:4], "big")


def suggest(space: Mapping[str, SearchParameter], goal: str, seed: str, index: int,
            history: Sequence[Observation], startup_trials: int = 10) -> dict[str, Any]:
    """Trial `index`'s values (numbers as the distribution's type, categories as strings),
    from the recorded trials. Running trials count as their worst case (constant liar), so
    trials suggested while others run spread out."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    distributions = {name: _distribution(space[name]) for name in sorted(space)}
    sampler = optuna.samplers.TPESampler(seed=_seed(seed, index), n_startup_trials=startup_trials,
                                         constant_liar=True)
    study = optuna.create_study(direction="maximize" if goal == "maximize" else "minimize", sampler=sampler)
    states = {"complete": optuna.trial.TrialState.COMPLETE, "failed": optuna.trial.TrialState.FAIL,
              "running": optuna.trial.TrialState.RUNNING}
    for seen in history:
        if set(seen.values) != set(distributions):
            continue
        objective = seen.objective if seen.state == "complete" else None
        state = seen.state if objective is None or math.isfinite(objective) else "failed"
        if state == "complete" and objective is None:
            state = "failed"
        params = {name: _internal(distributions[name], seen.values[name]) for name in distributions}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=distributions, state=states[state],
            value=objective if state == "complete" else None))
    trial = study.ask(distributions)
    return dict(trial.params)
