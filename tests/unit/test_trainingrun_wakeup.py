"""TrainingRuns waiting for their Experiment are found by an index, not by retries."""

from mlflow_operator.handlers.trainingrun import experiment_ready, waiting_for_experiment


def run(status: dict | None = None, ref: str | None = "exp") -> dict:
    spec = {"experimentRef": {"name": ref}} if ref else {"experimentName": "shared"}
    return {"metadata": {"namespace": "team-a", "name": "r1", "uid": "u1"}, "spec": spec, "status": status or {}}


def test_a_run_not_started_is_indexed_under_the_experiment_it_names():
    assert waiting_for_experiment(run()) == {("team-a", "exp"): {"name": "r1", "uid": "u1"}}


def test_a_started_run_waits_for_nothing():
    assert waiting_for_experiment(run({"runId": "abc"})) is None


def test_a_run_without_an_experiment_ref_waits_for_no_object():
    assert waiting_for_experiment(run(ref=None)) is None


def test_an_experiment_wakes_runs_only_when_ready_with_an_id():
    ready = {"type": "Ready", "status": "True"}
    assert experiment_ready({"status": {"experimentId": "7", "conditions": [ready]}})
    assert not experiment_ready({"status": {"conditions": [ready]}})
    assert not experiment_ready({"status": {"experimentId": "7", "conditions": [{**ready, "status": "False"}]}})
    assert not experiment_ready({})
