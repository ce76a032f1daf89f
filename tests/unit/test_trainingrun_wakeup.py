"""TrainingRuns waiting for their Experiment are found by what the watch has seen, not by retries."""

from mlflow_operator.caches.watches import Waiting
from mlflow_operator.handlers.trainingrun import run_waiting_for_experiment
from mlflow_operator.handlers.waiting import experiment_ready


def run(status: dict | None = None, ref: str | None = "exp") -> dict:
    spec = {"experimentRef": {"name": ref}} if ref else {"experimentName": "shared"}
    return {"metadata": {"namespace": "team-a", "name": "r1", "uid": "u1"}, "spec": spec, "status": status or {}}


def test_a_run_not_started_waits_for_the_experiment_it_names():
    assert run_waiting_for_experiment(run()) == ("team-a", "exp")


def test_a_started_run_waits_for_nothing():
    assert run_waiting_for_experiment(run({"runId": "abc"})) is None


def test_a_run_without_an_experiment_ref_waits_for_no_object():
    assert run_waiting_for_experiment(run(ref=None)) is None


def test_an_experiment_wakes_runs_only_when_ready_with_an_id():
    ready = {"type": "Ready", "status": "True"}
    assert experiment_ready({"status": {"experimentId": "7", "conditions": [ready]}})
    assert not experiment_ready({"status": {"conditions": [ready]}})
    assert not experiment_ready({"status": {"experimentId": "7", "conditions": [{**ready, "status": "False"}]}})
    assert not experiment_ready({})


def test_the_runs_waiting_for_an_experiment_are_found_by_its_key():
    waiting = Waiting()
    waiting.put("u1", "r1", ("team-a", "exp"))
    waiting.put("u2", "r2", ("team-a", "exp"))
    waiting.put("u3", "r3", ("team-a", "other"))
    assert sorted(waiting.waiting_for(("team-a", "exp"))) == [("r1", "u1"), ("r2", "u2")]
    assert waiting.waiting_for(("team-b", "exp")) == []


def test_a_run_that_started_or_names_another_experiment_no_longer_waits_for_the_first():
    waiting = Waiting()
    waiting.put("u1", "r1", ("team-a", "exp"))
    waiting.put("u2", "r2", ("team-a", "exp"))
    waiting.put("u1", "r1", ("team-a", "other"))
    waiting.put("u2", "r2", None)
    assert waiting.waiting_for(("team-a", "exp")) == []
    assert waiting.waiting_for(("team-a", "other")) == [("r1", "u1")]
    assert len(waiting) == 1
