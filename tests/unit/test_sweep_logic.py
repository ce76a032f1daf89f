"""TrainingSweep decisions: the trials of a search space, which to start, when it is over,
which is best, and the TrainingRun each trial becomes."""

from __future__ import annotations

import math

import pytest

from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.api.trainingsweep import TrainingSweepSpec
from mlflow_operator.logic import trainingsweep as logic
from mlflow_operator.logic.conditions import ReconcileProblem
from mlflow_operator.reconcilers.trainingsweep import parse_spec

TEMPLATE = {"spec": {"containers": [{"name": "train", "image": "trainer:1"}]}}
SWEEP = ObjectIdentity(kind="TrainingSweep", namespace="ns", name="tune", uid="uid-1")


def sweep(**overrides) -> TrainingSweepSpec:
    raw = {"experimentName": "e", "template": TEMPLATE, "objective": {"metric": "accuracy"},
           "parameters": {"n_estimators": {"values": ["10", "50", "100"]},
                          "max_depth": {"values": ["2", "4", "8", "16"]}}}
    raw.update(overrides)
    return TrainingSweepSpec.parse(raw)


def trial(index: int, phase: str, **metrics: float) -> logic.TrialView:
    return logic.TrialView(index=index, name=f"tune-{index}", phase=phase, run_id=f"run{index}", metrics=metrics)


def test_a_3_by_4_grid_has_12_distinct_trials_the_last_name_varying_fastest():
    spec = sweep()
    trials = [logic.searched_values(spec, i, "s") for i in range(logic.trial_count(spec))]
    assert len(trials) == 12 and len({tuple(t.items()) for t in trials}) == 12
    assert trials[0] == {"max_depth": "2", "n_estimators": "10"}
    assert trials[1] == {"max_depth": "2", "n_estimators": "50"}
    assert trials[3] == {"max_depth": "4", "n_estimators": "10"}


def test_max_trials_runs_the_first_points_of_a_larger_grid():
    assert logic.trial_count(sweep(maxTrials=5)) == 5


def test_trial_params_merge_the_fixed_params_with_the_searched_values():
    spec = sweep(params={"random_state": "7"})
    assert logic.trial_params(spec, 0, "s") == {"random_state": "7", "max_depth": "2", "n_estimators": "10"}


def test_an_int_linear_range_without_steps_takes_every_integer():
    spec = sweep(parameters={"depth": {"min": 2, "max": 5, "type": "int"}})
    assert [logic.searched_values(spec, i, "s")["depth"] for i in range(4)] == ["2", "3", "4", "5"]


def test_a_log_range_grid_is_evenly_spaced_on_the_log_scale():
    spec = sweep(parameters={"lr": {"min": 0.0001, "max": 0.1, "scale": "log", "steps": 4}})
    assert [logic.searched_values(spec, i, "s")["lr"] for i in range(4)] == ["0.0001", "0.001", "0.01", "0.1"]


def test_a_float_linear_grid_is_written_without_float_noise():
    spec = sweep(parameters={"frac": {"min": 0.1, "max": 0.5, "steps": 5}})
    assert [logic.searched_values(spec, i, "s")["frac"] for i in range(5)] == ["0.1", "0.2", "0.3", "0.4", "0.5"]


def test_a_grid_over_a_float_range_without_steps_is_an_invalid_spec():
    with pytest.raises(ReconcileProblem, match="needs steps"):
        logic.trial_count(sweep(parameters={"lr": {"min": 0.1, "max": 0.5}}))


def test_a_grid_larger_than_the_trial_limit_needs_max_trials():
    with pytest.raises(ReconcileProblem, match="set maxTrials"):
        logic.trial_count(sweep(parameters={"a": {"min": 1, "max": 100, "type": "int"},
                                            "b": {"min": 1, "max": 100, "type": "int"}}))


def random_sweep(**algorithm) -> TrainingSweepSpec:
    return sweep(algorithm={"type": "random", **algorithm}, maxTrials=20, parameters={
        "lr": {"min": 0.0001, "max": 0.1, "scale": "log"},
        "depth": {"min": 2, "max": 12, "type": "int"},
        "trees": {"min": 10, "max": 1000, "type": "int", "scale": "log"},
        "frac": {"min": 0.5, "max": 0.9},
        "criterion": {"values": ["gini", "entropy"]},
    })


def test_a_seeded_random_trial_is_the_same_whatever_order_trials_are_drawn_in():
    spec = random_sweep(seed=42)
    forward = [logic.searched_values(spec, i, logic.seed_source(spec, "uid-a")) for i in range(20)]
    backward = [logic.searched_values(spec, i, logic.seed_source(spec, "uid-b")) for i in reversed(range(20))]
    assert forward == list(reversed(backward))


def test_another_seed_draws_other_trials():
    a = [logic.searched_values(random_sweep(seed=1), i, "1") for i in range(5)]
    b = [logic.searched_values(random_sweep(seed=2), i, "2") for i in range(5)]
    assert a != b


def test_without_a_seed_the_uid_seeds_the_search():
    spec = random_sweep()
    assert logic.seed_source(spec, "uid-a") == "uid-a"
    assert logic.searched_values(spec, 0, "uid-a") != logic.searched_values(spec, 0, "uid-b")


def test_random_values_stay_within_their_ranges_and_types():
    spec = random_sweep(seed=3)
    for i in range(20):
        values = logic.searched_values(spec, i, "3")
        assert 0.0001 <= float(values["lr"]) <= 0.1
        assert 2 <= int(values["depth"]) <= 12
        assert 10 <= int(values["trees"]) <= 1000
        assert 0.5 <= float(values["frac"]) <= 0.9
        assert values["criterion"] in ("gini", "entropy")


def test_a_random_search_needs_max_trials():
    with pytest.raises(ReconcileProblem, match="needs maxTrials"):
        logic.trial_count(sweep(algorithm={"type": "random"}))


def test_a_parameter_both_fixed_and_searched_is_an_invalid_spec():
    with pytest.raises(ReconcileProblem, match="max_depth: both fixed"):
        parse_spec({"experimentName": "e", "template": TEMPLATE, "objective": {"metric": "a"},
                    "params": {"max_depth": "3"}, "parameters": {"max_depth": {"values": ["1"]}}})


# --------------------------------------------------------------------------- plan


def test_the_first_plan_starts_the_lowest_indices_up_to_parallelism():
    plan = logic.plan(12, {}, parallelism=3, max_failed=None)
    assert plan.create == [0, 1, 2] and not plan.over and plan.unfinished == 3


def test_no_trial_starts_while_parallelism_trials_are_unfinished():
    trials = {0: trial(0, "Running"), 1: trial(1, "Pending"), 2: trial(2, "Running")}
    assert logic.plan(12, trials, parallelism=3, max_failed=None).create == []


def test_an_ended_trial_makes_room_for_the_next_index():
    trials = {0: trial(0, "Succeeded"), 1: trial(1, "Running"), 2: trial(2, "Failed")}
    plan = logic.plan(12, trials, parallelism=3, max_failed=None)
    assert plan.create == [3, 4] and plan.unfinished == 3


def test_counts_cover_every_trial():
    trials = {0: trial(0, "Succeeded"), 1: trial(1, "Running"), 2: trial(2, "Failed")}
    counts = logic.plan(12, trials, parallelism=3, max_failed=None).counts
    assert counts.as_status().as_patch() == {"total": 12, "pending": 9, "running": 1, "succeeded": 1, "failed": 1,
                                             "earlyStopped": 0, "progress": "2/12"}


def test_the_sweep_is_over_when_every_trial_has_ended():
    trials = {i: trial(i, "Succeeded" if i % 2 else "Failed") for i in range(4)}
    plan = logic.plan(4, trials, parallelism=2, max_failed=None)
    assert plan.over and plan.create == [] and plan.stopped_because is None


def test_more_failures_than_max_failed_trials_start_no_further_trial():
    trials = {0: trial(0, "Failed"), 1: trial(1, "Failed"), 2: trial(2, "Running")}
    plan = logic.plan(12, trials, parallelism=3, max_failed=1)
    assert plan.create == [] and not plan.over and "2 trials failed" in (plan.stopped_because or "")


def test_a_stopped_sweep_is_over_once_its_running_trials_end():
    trials = {0: trial(0, "Failed"), 1: trial(1, "Failed"), 2: trial(2, "Succeeded")}
    assert logic.plan(12, trials, parallelism=3, max_failed=1).over


def test_max_failed_trials_equal_to_the_failures_keeps_going():
    trials = {0: trial(0, "Failed"), 1: trial(1, "Succeeded")}
    assert logic.plan(4, trials, parallelism=2, max_failed=1).create == [2, 3]


# --------------------------------------------------------------------------- best


def test_the_best_trial_maximizes_the_objective_among_succeeded_trials():
    trials = {0: trial(0, "Succeeded", accuracy=0.9), 1: trial(1, "Succeeded", accuracy=0.95),
              2: trial(2, "Failed", accuracy=0.99), 3: trial(3, "Succeeded")}
    best = logic.best_trial(trials, "accuracy", "maximize")
    assert best is not None and best.index == 1


def test_the_best_trial_minimizes_when_the_goal_says_so():
    trials = {0: trial(0, "Succeeded", loss=0.3), 1: trial(1, "Succeeded", loss=0.1)}
    best = logic.best_trial(trials, "loss", "minimize")
    assert best is not None and best.index == 1


def test_a_tie_goes_to_the_lowest_index_and_nan_never_wins():
    trials = {2: trial(2, "Succeeded", a=0.5), 1: trial(1, "Succeeded", a=0.5), 0: trial(0, "Succeeded", a=math.nan)}
    best = logic.best_trial(trials, "a", "maximize")
    assert best is not None and best.index == 1


def test_no_best_trial_without_the_metric():
    assert logic.best_trial({0: trial(0, "Succeeded", f1=0.4)}, "accuracy", "maximize") is None


# --------------------------------------------------------------------------- objects and tags


def test_a_trial_is_a_training_run_owned_by_the_sweep_and_nested_under_its_parent_run():
    spec = sweep(runName="rf", activeDeadlineSeconds=60, tracking={"secretRef": {"name": "creds"}})
    metadata = {"annotations": {"mlflow.operator.dev/source-revision": "abc",
                                "argocd.argoproj.io/tracking-id": "app:x"}}
    body = logic.trial_body(spec, SWEEP, metadata, 4, {"max_depth": "4"}, "parent0")
    assert body["kind"] == "TrainingRun" and body["metadata"]["name"] == "tune-4"
    assert body["metadata"]["labels"]["mlflow.operator.dev/sweep"] == "tune"
    assert body["metadata"]["labels"]["mlflow.operator.dev/trial"] == "4"
    [owner] = body["metadata"]["ownerReferences"]
    assert owner["uid"] == "uid-1" and owner["controller"] and owner["kind"] == "TrainingSweep"
    assert body["metadata"]["annotations"] == {"mlflow.operator.dev/source-revision": "abc",
                                               "mlflow.operator.dev/parent-run-id": "parent0"}
    child = body["spec"]
    assert child["runName"] == "rf-4" and child["params"] == {"max_depth": "4"}
    assert child["experimentName"] == "e" and child["primaryMetric"] == "accuracy"
    assert child["activeDeadlineSeconds"] == 60 and child["tracking"] == {"secretRef": {"name": "creds"}}
    assert "registerModel" not in child


def test_only_a_training_run_a_sweep_controls_is_nested():
    owned = {"ownerReferences": [{"apiVersion": "mlflow.operator.dev/v1alpha1", "kind": "TrainingSweep",
                                  "name": "tune", "uid": "u", "controller": True}],
             "annotations": {"mlflow.operator.dev/parent-run-id": "abc123"},
             "labels": {"mlflow.operator.dev/trial": "3"}}
    assert logic.trial_run_tags(owned) == {"mlflow.parentRunId": "abc123", "mlflow.operator.dev/sweep": "tune",
                                           "mlflow.operator.dev/trial": "3"}
    assert logic.trial_run_tags({"annotations": owned["annotations"]}) == {}


def test_a_parent_run_id_that_is_not_an_id_is_ignored():
    metadata = {"ownerReferences": [{"apiVersion": "mlflow.operator.dev/v1alpha1", "kind": "TrainingSweep",
                                     "name": "t", "uid": "u", "controller": True}],
                "annotations": {"mlflow.operator.dev/parent-run-id": "x' OR 1=1"}}
    assert logic.trial_run_tags(metadata) == {}
