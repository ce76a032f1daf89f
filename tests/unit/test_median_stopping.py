"""Median stopping: a running trial is stopped when its best objective up to its last step is
worse than the median of the completed trials' best up to that step."""

from mlflow_operator.cluster.snapshots import JobSnapshot
from mlflow_operator.logic import trainingsweep as logic
from mlflow_operator.logic.trainingrun import final_run_status, job_outcome, stop_reason

COMPLETED = {0: [(0, 0.5), (1, 0.7), (2, 0.8)], 1: [(0, 0.6), (1, 0.75), (2, 0.85)], 2: [(0, 0.4), (1, 0.6), (2, 0.9)]}


def test_a_trial_worse_than_the_median_at_its_step_is_stopped_and_told_why():
    stops = logic.median_stops({3: [(0, 0.3), (1, 0.4)]}, COMPLETED, "maximize", min_trials=3, start_step=0)
    assert list(stops) == [3]
    assert "0.4 by step 1" in stops[3] and "median 0.7 of 3 completed trials" in stops[3]


def test_a_trial_as_good_as_the_median_runs_on():
    assert logic.median_stops({3: [(0, 0.2), (1, 0.71)]}, COMPLETED, "maximize", 3, 0) == {}


def test_for_a_loss_lower_is_better():
    losses = {i: [(s, 1 - v) for s, v in h] for i, h in COMPLETED.items()}
    assert list(logic.median_stops({3: [(0, 0.9)]}, losses, "minimize", 3, 0)) == [3]
    assert logic.median_stops({3: [(0, 0.1)]}, losses, "minimize", 3, 0) == {}


def test_no_trial_is_stopped_before_the_start_step():
    assert logic.median_stops({3: [(0, 0.0), (1, 0.0)]}, COMPLETED, "maximize", 3, start_step=2) == {}
    assert list(logic.median_stops({3: [(0, 0.0), (2, 0.0)]}, COMPLETED, "maximize", 3, start_step=2)) == [3]


def test_no_trial_is_stopped_until_enough_completed_trials_reached_its_step():
    assert logic.median_stops({3: [(0, 0.0)]}, COMPLETED, "maximize", min_trials=4, start_step=0) == {}


def test_a_trial_that_logged_nothing_yet_runs_on():
    assert logic.median_stops({3: []}, COMPLETED, "maximize", 1, 0) == {}


def test_an_even_number_of_completed_trials_takes_the_mean_of_the_middle_two():
    completed = {0: [(0, 1.0)], 1: [(0, 2.0)], 2: [(0, 3.0)], 3: [(0, 4.0)]}
    assert logic.median_stops({9: [(0, 2.4)]}, completed, "maximize", 4, 0)  # median 2.5
    assert not logic.median_stops({9: [(0, 2.5)]}, completed, "maximize", 4, 0)


def test_a_job_deleted_because_its_sweep_stopped_the_trial_ends_early_stopped_and_killed():
    deleted = JobSnapshot(uid="j", controller_uid="u", deleting=True)
    ended = job_outcome(deleted, "t-3", [], stop_reason({"annotations": {"mlflow.operator.dev/stop": "median"}}))
    assert (ended.phase, ended.reason) == ("EarlyStopped", "EarlyStopped") and "median" in ended.message
    assert final_run_status(ended.phase, ended.reason) == "KILLED"


def test_a_job_deleted_without_a_stop_is_still_cut_short():
    ended = job_outcome(JobSnapshot(uid="j", controller_uid="u", deleting=True), "t-3", [], stop_reason({}))
    assert (ended.phase, ended.reason) == ("Failed", "JobDeleted")


def test_a_job_that_completed_before_its_stop_took_effect_succeeded():
    done = JobSnapshot(uid="j", controller_uid="u", deleting=True, finished=("Complete", "", ""))
    assert job_outcome(done, "t-3", [], "median").phase == "Succeeded"


def test_a_stop_reason_is_bounded():
    assert len(stop_reason({"annotations": {"mlflow.operator.dev/stop": "x" * 5000}}) or "") == 500


def test_stopped_trials_are_counted_apart_and_never_the_best():
    trials = {0: logic.TrialView(0, "s-0", "Succeeded", metrics={"m": 0.5}),
              1: logic.TrialView(1, "s-1", "EarlyStopped", metrics={"m": 0.9}),
              2: logic.TrialView(2, "s-2", "Failed")}
    plan = logic.plan(3, trials, parallelism=1, max_failed=None)
    assert (plan.counts.early_stopped, plan.counts.failed, plan.counts.succeeded) == (1, 1, 1) and plan.over
    best = logic.best_trial(trials, "m", "maximize")
    assert best is not None and best.name == "s-0"
