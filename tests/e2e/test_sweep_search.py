"""TrainingSweep searching well: TPE against random search, median stopping, extending a
finished sweep, stopping running trials past maxFailedTrials, and a TPE sweep that survives
the operator being killed. On kwok, the trials played by the test (tests/e2e/test_trainingsweep.py's
Trainer): each logs a known function of its params to its own run in the real MLflow server."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from kubernetes.client.exceptions import ApiException
from test_trainingrun import kill_operator, restart_operator, template
from test_trainingsweep import FINISH, SWEEP_LABEL, Trainer

from helpers import Objects, event_reasons, wait_for

SPACE = {"x": {"min": -4.0, "max": 4.0}, "y": {"min": -4.0, "max": 4.0}}


def bowl(params: dict[str, str]) -> float:
    """A smooth score with one best point (x = 1.5, y = -0.5), at most 1."""
    return round(1 - ((float(params["x"]) - 1.5) ** 2 + (float(params["y"]) + 0.5) ** 2) / 32, 6)


def search_spec(algorithm: dict, trials: int, **overrides) -> dict:
    spec = {"experimentName": f"search-{uuid.uuid4().hex[:8]}", "parameters": SPACE, "algorithm": algorithm,
            "objective": {"metric": "accuracy"}, "maxTrials": trials, "parallelism": 1, "template": template()}
    spec.update(overrides)
    return spec


def trial_values(runs: Objects, sweep: str) -> list[dict[str, str]]:
    items = runs.custom.list_namespaced_custom_object("mlflow.operator.dev", "v1alpha1", runs.namespace,
                                                      "trainingruns", label_selector=f"{SWEEP_LABEL}={sweep}")["items"]
    ordered = sorted(items, key=lambda t: int(t["metadata"]["labels"]["mlflow.operator.dev/trial"]))
    return [t["spec"]["params"] for t in ordered]


def train_all(trainers: dict[str, Trainer], sweeps: Objects, timeout: float = 420) -> dict[str, dict]:
    """Play several sweeps' trials at once, each in its own thread, until each Succeeded."""
    results: dict[str, dict] = {}
    errors: list[BaseException] = []

    def play(name: str, trainer: Trainer) -> None:
        try:
            results[name] = trainer.train_until(sweeps, "Succeeded", timeout=timeout)
        except BaseException as error:  # reported below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=play, args=item) for item in trainers.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_a_seeded_tpe_sweep_finds_a_better_objective_than_random_search_and_is_reproducible(
    sweeps, runs, core, mlflow_client
):
    sweeps.create("tpe-a", search_spec({"type": "tpe", "seed": 11}, 30))
    sweeps.create("tpe-b", search_spec({"type": "tpe", "seed": 11}, 30))
    sweeps.create("rand", search_spec({"type": "random", "seed": 11}, 30))
    done = train_all({name: Trainer(core, runs, mlflow_client, name, score=bowl) for name in ("tpe-a", "tpe-b", "rand")},
                     sweeps)
    best = {name: obj["status"]["bestTrial"]["value"] for name, obj in done.items()}
    assert best["tpe-a"] > best["rand"], best
    # Applied twice with the same seed, trial by trial the same values.
    assert trial_values(runs, "tpe-a") == trial_values(runs, "tpe-b")
    assert len(trial_values(runs, "tpe-a")) == 30


class SteppedTrainer:
    """Plays trials that log their objective step by step: `curve(params)` gives each step's
    value; trials for which `hang(params)` is true log their steps and never finish."""

    def __init__(self, core, runs: Objects, mlflow_client, sweep: str, curve, hang) -> None:
        self.core, self.runs, self.mlflow, self.sweep, self.curve, self.hang = core, runs, mlflow_client, sweep, curve, hang
        self.played: set[str] = set()

    def step(self) -> None:
        for pod in self.core.list_namespaced_pod(self.runs.namespace, label_selector="mlflow.operator.dev/training-run").items:
            trial = pod.metadata.labels["mlflow.operator.dev/training-run"]
            if not trial.startswith(f"{self.sweep}-") or pod.status.phase != "Running" or pod.metadata.name in self.played:
                continue
            env = {e.name: e.value for e in pod.spec.containers[0].env or [] if e.value is not None}
            params = {k[len("MLFLOW_PARAM_"):].lower(): v for k, v in env.items() if k.startswith("MLFLOW_PARAM_")}
            for step, value in enumerate(self.curve(params)):
                self.mlflow.log_metric(env["MLFLOW_RUN_ID"], "accuracy", value, step=step)
            self.played.add(pod.metadata.name)
            if not self.hang(params):
                self.core.patch_namespaced_pod(pod.metadata.name, self.runs.namespace,
                                               {"metadata": {"annotations": {FINISH: "succeeded"}}})


def test_median_stopping_stops_a_clearly_worse_trial_which_is_never_the_best(sweeps, runs, core, mlflow_client, namespace):
    # Three good trials complete; the fourth logs clearly worse values at every step and would
    # never finish: median stopping stops it.
    quality = {"q": {"values": ["0.90", "0.80", "0.85", "0.20"]}}
    sweeps.create("median", {**search_spec({"type": "grid"}, 4, parameters=quality),
                             "earlyStopping": {"type": "median", "minTrialsRequired": 3, "startStep": 1}})
    trainer = SteppedTrainer(core, runs, mlflow_client, "median",
                             curve=lambda p: [float(p["q"]) * (s + 1) / 4 for s in range(4)],
                             hang=lambda p: p["q"] == "0.20")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and (sweeps.get("median").get("status") or {}).get("phase") != "Succeeded":
        trainer.step()
        time.sleep(0.3)
    status = sweeps.get("median")["status"]
    assert status["phase"] == "Succeeded", status
    assert status["trials"]["earlyStopped"] == 1 and status["trials"]["succeeded"] == 3 and status["trials"]["failed"] == 0
    stopped = runs.get("median-3")
    assert stopped["status"]["phase"] == "EarlyStopped"
    assert "median stopping" in stopped["metadata"]["annotations"]["mlflow.operator.dev/stop"]
    run = mlflow_client.get_run(stopped["status"]["runId"])
    assert run.info.status == "KILLED" and "median" in run.data.tags["mlflow.operator.dev/stopped"]
    assert status["bestTrial"]["name"] == "median-0" and status["bestTrial"]["params"]["q"] == "0.90"
    assert "EarlyStopped" in event_reasons(core, namespace, "median")


def test_raising_max_trials_on_a_succeeded_sweep_runs_the_extra_trials_and_moves_the_best(
    sweeps, runs, core, mlflow_client, namespace
):
    values = {"v": {"values": [str(v) for v in range(1, 9)]}}
    sweeps.create("grow", search_spec({"type": "grid"}, 3, parameters=values, parallelism=3))
    trainer = Trainer(core, runs, mlflow_client, "grow", score=lambda p: int(p["v"]) / 10)
    first = trainer.train_until(sweeps, "Succeeded")["status"]
    assert first["bestTrial"]["name"] == "grow-2" and first["trials"]["total"] == 3
    parent = first["parentRunId"]
    sweeps.patch_spec("grow", {"maxTrials": 6})
    wait_for(lambda: (sweeps.get("grow").get("status") or {}).get("phase") == "Running", timeout=30,
             message="the sweep running again")
    assert mlflow_client.get_run(parent).info.status == "RUNNING"
    status = trainer.train_until(sweeps, "Succeeded")["status"]
    assert status["trials"]["total"] == 6 and status["trials"]["succeeded"] == 6
    assert status["bestTrial"]["name"] == "grow-5" and status["parentRunId"] == parent
    closed = mlflow_client.get_run(parent)
    assert closed.info.status == "FINISHED" and closed.data.metrics["accuracy"] == 0.6
    assert "Extended" in event_reasons(core, namespace, "grow")


def test_a_started_sweep_takes_a_raised_max_trials_and_another_parallelism_but_nothing_else(sweeps):
    sweeps.create("fixed", search_spec({"type": "random", "seed": 1}, 5))
    wait_for(lambda: (sweeps.get("fixed").get("status") or {}).get("parentRunId"), timeout=30)
    sweeps.patch_spec("fixed", {"parallelism": 2, "maxTrials": 6})
    for change in ({"maxTrials": 4}, {"objective": {"metric": "loss"}}, {"algorithm": {"type": "random", "seed": 2}}):
        with pytest.raises(ApiException) as refused:
            sweeps.patch_spec("fixed", change)
        assert refused.value.status == 422


def test_past_max_failed_trials_the_running_trials_are_stopped_not_left_to_finish(
    sweeps, runs, core, mlflow_client
):
    values = {"v": {"values": ["1", "2", "3", "4"]}}
    sweeps.create("brittle", search_spec({"type": "grid"}, 4, parameters=values, parallelism=3, maxFailedTrials=0))
    wait_for(lambda: len([p for p in core.list_namespaced_pod(runs.namespace, label_selector="job-name=brittle-0").items
                          if p.status.phase == "Running"]) == 1, timeout=60, message="trial 0 running")
    wait_for(lambda: all((runs.get(f"brittle-{i}").get("status") or {}).get("phase") == "Running" for i in (1, 2)),
             timeout=60, message="trials 1 and 2 running")
    [pod] = core.list_namespaced_pod(runs.namespace, label_selector="job-name=brittle-0").items
    core.patch_namespaced_pod(pod.metadata.name, runs.namespace, {"metadata": {"annotations": {FINISH: "failed"}}})
    status = wait_for(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(sweeps.get("brittle").get("status") or {}),
                      timeout=90, message="the sweep failed")
    assert status["trials"]["failed"] == 1 and status["trials"]["earlyStopped"] == 2
    for name in ("brittle-1", "brittle-2"):
        trial = runs.get(name)
        assert trial["status"]["phase"] == "EarlyStopped"
        assert mlflow_client.get_run(trial["status"]["runId"]).info.status == "KILLED"
    assert not runs.exists("brittle-3")
    assert sweeps.condition("brittle")["reason"] == "TooManyFailedTrials"


def test_a_tpe_sweep_whose_operator_is_killed_mid_sweep_has_the_same_trials_as_an_undisturbed_one(
    sweeps, runs, core, mlflow_client, sandbox
):
    sweeps.create("calm", search_spec({"type": "tpe", "seed": 5}, 14))
    sweeps.create("shaken", search_spec({"type": "tpe", "seed": 5}, 14))
    calm = Trainer(core, runs, mlflow_client, "calm", score=bowl)
    shaken = Trainer(core, runs, mlflow_client, "shaken", score=bowl)
    calm.train_until(sweeps, "Succeeded", timeout=300)
    while len(shaken.trained) < 11:  # into TPE's own suggestions (after 10 random ones)
        if not shaken.step():
            time.sleep(0.3)
    kill_operator(sandbox)
    shaken.step()  # a trial ends while the operator is down
    restart_operator(sandbox)
    shaken.train_until(sweeps, "Succeeded", timeout=300)
    assert trial_values(runs, "shaken") == trial_values(runs, "calm")
