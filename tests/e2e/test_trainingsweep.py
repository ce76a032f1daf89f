"""TrainingSweep against the real API server, controllers, kwok nodes and MLflow server.

The trials' pods are held Running on kwok nodes; the test plays their training code: it
reads a pod's environment as the operator wired it (MLFLOW_RUN_ID, MLFLOW_PARAM_*), logs
the objective metric to that run in the real MLflow server, and finishes the pod.
"""

from __future__ import annotations

import functools
import json
import time
import uuid
from typing import Callable

import pytest
from kubernetes.client.exceptions import ApiException
from test_trainingrun import kill_operator, restart_operator, template

from helpers import Objects, event_reasons, wait_for

FINISH = "sandbox.mlflow.operator.dev/finish"
SWEEP_LABEL = "mlflow.operator.dev/sweep"
GRID = {"n_estimators": {"values": ["10", "50", "100"]}, "max_depth": {"values": ["2", "4", "8", "16"]}}


def sweep_spec(experiment: str, **overrides) -> dict:
    """A sweep in its own MLflow experiment (`experiment` and a random suffix: experiments
    belong to the namespace that made them, and every test has its own namespace)."""
    spec = {"experimentName": f"{experiment}-{uuid.uuid4().hex[:8]}", "parameters": GRID, "objective": {"metric": "accuracy"},
            "parallelism": 3, "template": template()}
    spec.update(overrides)
    return spec


def accuracy(params: dict[str, str]) -> float:
    """A score with one best point: max_depth 8, n_estimators 50."""
    return round(0.9 - abs(int(params["max_depth"]) - 8) / 100 - abs(int(params["n_estimators"]) - 50) / 1000, 4)


class Trainer:
    """Plays the training code of a sweep's held trial pods, one pod at a time, and checks at
    every step how many of the sweep's trials are unfinished."""

    def __init__(self, core, runs: Objects, mlflow_client, sweep: str,
                 score: Callable[[dict[str, str]], float] = accuracy,
                 fails: Callable[[dict[str, str]], bool] = lambda params: False) -> None:
        self.core, self.runs, self.mlflow, self.sweep = core, runs, mlflow_client, sweep
        self.score, self.fails = score, fails
        self.most_unfinished = 0
        self.trained: list[dict[str, str]] = []

    def trials(self) -> list[dict]:
        return self.runs.custom.list_namespaced_custom_object(
            "mlflow.operator.dev", "v1alpha1", self.runs.namespace, "trainingruns",
            label_selector=f"{SWEEP_LABEL}={self.sweep}")["items"]

    def unfinished(self) -> int:
        return sum(1 for t in self.trials() if (t.get("status") or {}).get("phase") not in ("Succeeded", "Failed", "EarlyStopped"))

    def step(self) -> bool:
        """Train and finish one running pod; False if none is running."""
        self.most_unfinished = max(self.most_unfinished, self.unfinished())
        for pod in self.core.list_namespaced_pod(self.runs.namespace,
                                                 label_selector="mlflow.operator.dev/training-run").items:
            annotations = pod.metadata.annotations or {}
            trial = pod.metadata.labels["mlflow.operator.dev/training-run"]
            if not trial.startswith(f"{self.sweep}-") or pod.status.phase != "Running" or FINISH in annotations:
                continue
            env = {e.name: e.value for e in pod.spec.containers[0].env or [] if e.value is not None}
            params = {k[len("MLFLOW_PARAM_"):].lower(): v for k, v in env.items() if k.startswith("MLFLOW_PARAM_")}
            if not self.fails(params):
                self.mlflow.log_metric(env["MLFLOW_RUN_ID"], "accuracy", self.score(params))
            self.core.patch_namespaced_pod(pod.metadata.name, self.runs.namespace, {"metadata": {"annotations": {
                FINISH: "failed" if self.fails(params) else "succeeded"}}})
            self.trained.append(params)
            return True
        return False

    def train_until(self, sweeps: Objects, phase: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obj = sweeps.get(self.sweep)
            if (obj.get("status") or {}).get("phase") == phase and not self.unfinished():
                return obj
            if not self.step():
                time.sleep(0.3)
        raise AssertionError(f"sweep {self.sweep} not {phase} after {timeout}s: {sweeps.get(self.sweep).get('status')}")


def child_runs(mlflow_client, experiment_id: str, parent_run_id: str) -> list:
    return mlflow_client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                     max_results=1000)


def test_a_12_trial_grid_with_parallelism_3_runs_every_trial_three_at_most_at_once_and_picks_the_best(
    sweeps, runs, core, mlflow_client, namespace
):
    sweeps.create("grid", sweep_spec("sweep-grid"))
    trainer = Trainer(core, runs, mlflow_client, "grid")
    obj = trainer.train_until(sweeps, "Succeeded")
    status = obj["status"]
    assert len(trainer.trained) == 12 and trainer.most_unfinished == 3
    assert status["trials"] == {"total": 12, "pending": 0, "running": 0, "succeeded": 12, "failed": 0,
                                "earlyStopped": 0, "progress": "12/12"}
    best = status["bestTrial"]
    assert best["params"] == {"max_depth": "8", "n_estimators": "50"} and best["metric"] == "accuracy=0.9"
    assert best["name"] == runs.get(best["name"])["metadata"]["name"]
    assert runs.get(best["name"])["status"]["runId"] == best["runId"]
    # MLflow shows the tree: 12 children under the parent, which has the best params and metric.
    children = child_runs(mlflow_client, status["experimentId"], status["parentRunId"])
    assert len(children) == 12 and {c.info.status for c in children} == {"FINISHED"}
    parent = mlflow_client.get_run(status["parentRunId"])
    assert parent.info.status == "FINISHED" and parent.data.metrics["accuracy"] == 0.9
    assert parent.data.params == {"max_depth": "8", "n_estimators": "50"}
    assert parent.data.tags["mlflow.operator.dev/best-trial"] == best["name"]
    assert sweeps.condition("grid")["status"] == "True"


def test_a_sweep_applied_before_its_experiment_starts_once_the_experiment_is_ready(
    sweeps, experiments, core, namespace
):
    spec = sweep_spec("sweep-later", parameters={"max_depth": {"values": ["2"]}}, parallelism=1)
    del spec["experimentName"]
    sweeps.create("waits", {**spec, "experimentRef": {"name": "later"}})
    condition = sweeps.wait_reason("waits", "ExperimentNotFound")
    assert "later" in condition["message"] and not sweeps.get("waits")["status"].get("parentRunId")
    experiments.create("later", {})
    started = wait_for(lambda: sweeps.get("waits")["status"].get("parentRunId"), timeout=60)
    assert started
    wait_for(lambda: "Started" in event_reasons(core, namespace, "waits"), message="a Started Event")


def test_kubectl_get_trainingruns_by_the_sweep_label_lists_its_trials(sweeps, sandbox, namespace):
    sweeps.create("listed", sweep_spec("sweep-listed", parameters={"a": {"values": ["1", "2"]}},
                                       template=template(hold=False)))
    wait_for(lambda: (sweeps.get("listed").get("status") or {}).get("phase") == "Failed", timeout=60)
    listed = sandbox.kubectl("get", "trainingruns", "-n", namespace, "-l", f"{SWEEP_LABEL}=listed",
                             "-o", "name").stdout.split()
    assert sorted(listed) == ["trainingrun.mlflow.operator.dev/listed-0", "trainingrun.mlflow.operator.dev/listed-1"]
    header, row = sandbox.kubectl("get", "trainingsweeps", "listed", "-n", namespace).stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "TRIALS", "BEST", "METRIC", "AGE"]
    assert row.split()[:3] == ["listed", "Failed", "2/2"]


def test_trials_that_log_no_objective_metric_fail_the_sweep_saying_so(sweeps, core, mlflow_client):
    sweeps.create("nometric", sweep_spec("sweep-nometric", parameters={"a": {"values": ["1", "2"]}},
                                         template=template(hold=False)))
    condition = sweeps.wait_reason("nometric", "ObjectiveMissing", timeout=60)
    assert "no succeeded trial logged the objective metric 'accuracy'" in condition["message"]
    status = sweeps.get("nometric")["status"]
    assert mlflow_client.get_run(status["parentRunId"]).info.status == "FAILED"
    assert sweeps.condition("nometric", "Stalled")["status"] == "True"


def test_a_seeded_random_sweep_applied_twice_yields_the_same_trials(sweeps, runs):
    space = {"lr": {"min": 0.0001, "max": 0.1, "scale": "log"}, "depth": {"min": 2, "max": 12, "type": "int"},
             "criterion": {"values": ["gini", "entropy"]}}
    for name in ("first", "second"):
        sweeps.create(name, sweep_spec(f"sweep-{name}", parameters=space, maxTrials=4, parallelism=4,
                                       algorithm={"type": "random", "seed": 42}, template=template(hold=False)))
    def trials_done(name: str) -> bool:
        return (sweeps.get(name).get("status") or {}).get("trials", {}).get("progress") == "4/4"

    for name in ("first", "second"):
        wait_for(functools.partial(trials_done, name), timeout=60)
    first = [runs.get(f"first-{i}")["spec"]["params"] for i in range(4)]
    second = [runs.get(f"second-{i}")["spec"]["params"] for i in range(4)]
    assert first == second
    assert len({tuple(sorted(p.items())) for p in first}) == 4


def test_more_failed_trials_than_max_failed_trials_start_no_more_and_fail_the_sweep(
    sweeps, runs, core, mlflow_client, namespace
):
    sweeps.create("fragile", sweep_spec("sweep-fragile", parallelism=1, maxFailedTrials=1))
    trainer = Trainer(core, runs, mlflow_client, "fragile", fails=lambda params: True)
    trainer.train_until(sweeps, "Failed", timeout=120)
    condition = sweeps.condition("fragile")
    assert condition["reason"] == "TooManyFailedTrials"
    assert "2 trials failed, more than maxFailedTrials (1)" in condition["message"]
    assert len(trainer.trials()) == 2
    status = sweeps.get("fragile")["status"]
    assert status["trials"]["failed"] == 2 and status["trials"]["pending"] == 10
    assert mlflow_client.get_run(status["parentRunId"]).info.status == "FAILED"
    assert "TooManyFailedTrials" in event_reasons(core, namespace, "fragile", "TrainingSweep")


def test_deleting_a_sweep_mid_way_deletes_its_trials_and_kills_their_runs(sweeps, runs, core, mlflow_client):
    sweeps.create("doomed", sweep_spec("sweep-doomed", parallelism=2))
    trainer = Trainer(core, runs, mlflow_client, "doomed")
    wait_for(lambda: sum(1 for t in trainer.trials() if (t.get("status") or {}).get("phase") == "Running") == 2,
             timeout=60)
    status = sweeps.get("doomed")["status"]
    run_ids = [t["status"]["runId"] for t in trainer.trials()]
    sweeps.delete("doomed")
    wait_for(lambda: not sweeps.exists("doomed") and not trainer.trials(), timeout=90,
             message="the sweep and its trials to be deleted")
    assert mlflow_client.get_run(status["parentRunId"]).info.status == "KILLED"
    wait_for(lambda: {mlflow_client.get_run(r).info.status for r in run_ids} == {"KILLED"}, timeout=30)


def test_killing_the_operator_repeatedly_mid_sweep_duplicates_no_trial_and_no_run(
    sweeps, runs, core, mlflow_client, sandbox
):
    sweeps.create("storm", sweep_spec("sweep-storm", parameters={"a": {"values": [str(i) for i in range(8)]}},
                                      parallelism=2))
    trainer = Trainer(core, runs, mlflow_client, "storm", score=lambda params: int(params["a"]) / 10)
    for _ in range(3):
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            if not trainer.step():
                time.sleep(0.2)
        kill_operator(sandbox)
        restart_operator(sandbox)
    status = trainer.train_until(sweeps, "Succeeded", timeout=180)["status"]
    assert sorted(t["metadata"]["name"] for t in trainer.trials()) == sorted(f"storm-{i}" for i in range(8))
    assert len(trainer.trained) == 8 and trainer.most_unfinished <= 2
    assert status["bestTrial"]["params"] == {"a": "7"}
    runs_in_experiment = mlflow_client.search_runs([status["experimentId"]], max_results=1000)
    assert len(runs_in_experiment) == 9  # the parent and one run per trial, none deleted or twinned
    assert len(child_runs(mlflow_client, status["experimentId"], status["parentRunId"])) == 8


def test_an_mlflow_outage_mid_sweep_is_ridden_out(sweeps, runs, core, mlflow_client, sandbox):
    sweeps.create("outage", sweep_spec("sweep-outage", parameters={"a": {"values": ["1", "2", "3", "4"]}},
                                       parallelism=2))
    trainer = Trainer(core, runs, mlflow_client, "outage", score=lambda params: int(params["a"]) / 10)
    wait_for(lambda: trainer.step(), timeout=60, message="a first trial to run")
    stopped = sandbox.sandbox("stop", "mlflow")
    assert stopped.returncode == 0, stopped.stderr
    try:
        # The trial's Job ends while MLflow is down: its outcome is recorded, its run not closed.
        wait_for(lambda: any((t.get("status") or {}).get("jobOutcome") and not t["status"].get("runStatus")
                             for t in trainer.trials()), timeout=60,
                 message="a trial's Job outcome recorded while its run cannot be closed")
    finally:
        restarted = sandbox.sandbox("up")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    status = trainer.train_until(sweeps, "Succeeded", timeout=180)["status"]
    assert status["trials"]["succeeded"] == 4 and status["bestTrial"]["params"] == {"a": "4"}
    assert mlflow_client.get_run(status["parentRunId"]).info.status == "FINISHED"


# --------------------------------------------------------------------------- admission


@pytest.mark.parametrize("overrides, message", [
    ({"parameters": {"a": {"values": []}}}, "values must list at least one value"),
    ({"parameters": {"a": {"min": 5, "max": 1, "type": "int"}}}, "min must not be greater than max"),
    ({"parameters": {"a": {"min": 0, "max": 1, "scale": "log", "steps": 3}}}, "a log scale needs min > 0"),
    ({"parameters": {"a": {"values": ["1"], "min": 1}}}, "set either values (a list) or min and max"),
    ({"parameters": {"a": {"min": 0.1, "max": 1}}}, "needs steps"),
    ({"maxTrials": 0}, "maxTrials"),
    ({"parallelism": 0}, "parallelism"),
    ({"params": {"max_depth": "3"}}, "a parameter is either fixed or searched"),
    ({"objective": {"goal": "maximize"}}, "metric"),
    ({"objective": {"metric": ""}}, "metric"),
    ({"algorithm": {"type": "random"}}, "a random or tpe search needs maxTrials"),
    ({"parameters": {}}, "parameters"),
])
def test_bad_input_is_rejected_at_admission_with_a_message_that_says_what_to_fix(sweeps, overrides, message):
    with pytest.raises(ApiException) as raised:
        sweeps.create("bad", sweep_spec("never", **overrides))
    assert raised.value.status == 422
    assert message in json.loads(raised.value.body)["message"]


def test_the_spec_cannot_change_once_the_sweep_has_started(sweeps):
    sweeps.create("fixed", sweep_spec("sweep-fixed"))
    wait_for(lambda: (sweeps.get("fixed").get("status") or {}).get("parentRunId"), timeout=30)
    with pytest.raises(ApiException) as raised:
        sweeps.patch_spec("fixed", {"objective": {"metric": "f1"}})
    assert raised.value.status == 422
    assert "only maxTrials (raised) and parallelism may change" in json.loads(raised.value.body)["message"]
