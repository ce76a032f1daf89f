"""TPE search: Optuna's sampler suggests each trial from the trials recorded so far, seeded,
so the same history gives the same trial; it beats random search on a smooth function."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mlflow_operator.api.trainingsweep import TrainingSweepSpec
from mlflow_operator.logic import trainingsweep as logic
from mlflow_operator.logic.conditions import ReconcileProblem

TEMPLATE = {"spec": {"containers": [{"name": "train", "image": "trainer:1"}]}}
SPACE = {"x": {"min": -4.0, "max": 4.0}, "depth": {"min": 1, "max": 64, "type": "int", "scale": "log"},
         "kind": {"values": ["a", "b", "c"]}}


def sweep(type_: str = "tpe", seed: int = 7, goal: str = "minimize") -> TrainingSweepSpec:
    return TrainingSweepSpec.parse({"experimentName": "e", "template": TEMPLATE, "maxTrials": 30,
                                    "algorithm": {"type": type_, "seed": seed},
                                    "objective": {"metric": "loss", "goal": goal}, "parameters": SPACE,
                                    "params": {"fixed": "1"}})


def loss(values: dict[str, str]) -> float:
    """A smooth function with one best point: x = 1.5, depth = 8, kind b."""
    return (float(values["x"]) - 1.5) ** 2 + abs(int(values["depth"]) - 8) / 8 + (0 if values["kind"] == "b" else 1)


def run_sweep(spec: TrainingSweepSpec, trials: int = 30) -> list[float]:
    """Trials one at a time (parallelism 1), each finishing with the function's value."""
    recorded: dict[int, logic.TrialView] = {}
    for index in range(trials):
        history = logic.observations(spec, recorded)
        params = logic.trial_params(spec, index, logic.seed_source(spec, "uid"), history)
        recorded[index] = logic.TrialView(index=index, name=f"s-{index}", phase="Succeeded", params=params,
                                          metrics={"loss": loss(params)})
    return [t.metrics["loss"] for t in recorded.values()]


def test_a_tpe_search_needs_max_trials():
    with pytest.raises(ReconcileProblem):
        logic.trial_count(TrainingSweepSpec.parse({"experimentName": "e", "template": TEMPLATE,
                                                   "algorithm": {"type": "tpe"}, "objective": {"metric": "m"},
                                                   "parameters": SPACE}))


def test_suggested_values_are_strings_in_the_search_space_with_the_fixed_params():
    spec = sweep()
    params = logic.trial_params(spec, 0, "7", [])
    assert params["fixed"] == "1" and params["kind"] in ("a", "b", "c")
    assert -4.0 <= float(params["x"]) <= 4.0 and 1 <= int(params["depth"]) <= 64


def test_the_same_history_and_seed_suggest_the_same_trial():
    spec = sweep()
    history = logic.observations(spec, {0: logic.TrialView(0, "s-0", "Succeeded", params={"x": "0.5", "depth": "4",
                                                                                           "kind": "a"},
                                                           metrics={"loss": 2.0})})
    assert logic.searched_values(spec, 1, "7", history) == logic.searched_values(spec, 1, "7", history)


def test_a_seeded_tpe_sweep_is_reproducible():
    assert run_sweep(sweep(), 15) == run_sweep(sweep(), 15)


def test_tpe_finds_a_better_objective_than_random_search_with_the_same_budget():
    assert min(run_sweep(sweep())) < min(run_sweep(sweep("random")))


def test_tpe_maximizes_when_the_goal_says_so():
    spec = sweep(goal="maximize")
    recorded: dict[int, logic.TrialView] = {}
    for index in range(25):
        params = logic.trial_params(spec, index, "7", logic.observations(spec, recorded))
        recorded[index] = logic.TrialView(index, f"s-{index}", "Succeeded", params=params,
                                          metrics={"loss": -loss(params)})
    late = [t.metrics["loss"] for i, t in recorded.items() if i >= 15]
    early = [t.metrics["loss"] for i, t in recorded.items() if i < 10]
    assert sum(late) / len(late) > sum(early) / len(early)


def test_failed_running_and_unscored_trials_are_told_apart():
    spec = sweep()
    values = {"x": "0", "depth": "2", "kind": "a"}
    history = logic.observations(spec, {
        0: logic.TrialView(0, "s-0", "Failed", params=values),
        1: logic.TrialView(1, "s-1", "Running", params=values),
        2: logic.TrialView(2, "s-2", "Succeeded", params=values),  # no objective logged
        3: logic.TrialView(3, "s-3", "Succeeded", params=values, metrics={"loss": 1.0}),
    }, suggested={4: values})
    assert [o.state for o in history] == ["failed", "running", "failed", "complete", "running"]
    assert history[3].objective == 1.0


def test_the_operator_imports_optuna_only_when_a_sweep_uses_tpe():
    code = ("import sys; import mlflow_operator.handlers, mlflow_operator.logic.trainingsweep; "
            "print('optuna' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
