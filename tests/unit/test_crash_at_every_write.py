"""Kill the operator right after each external write, start it again from what is stored
(the object in the API server, MLflow), and check that nothing is duplicated or lost. For a
TrainingRun: exactly one MLflow run, at most one Job, one model version, Succeeded. For an
Experiment and a RegisteredModel: exactly one MLflow entity, owned by the object, Ready. For
a TrainingSweep: one parent run, one run per trial, the best registered once. For every
deletion step: what it closes or deletes, closed or deleted once.

The reconcile paths are the operator's own (handlers/); the API server and MLflow are the
in-process fakes of tests/fakes.py, because the process must die between one write and the
next, which the sandbox's real servers cannot be made to show at every write (its kill tests
cover the real ones at a few points).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

import kopf
import pytest

from mlflow_operator.api.common import TAG_UID
from mlflow_operator.api.trainingrun import LABEL_RUN_ID
from mlflow_operator.caches import Caches
from mlflow_operator.handlers import common as handlers_common
from mlflow_operator.handlers.experiment import EXPERIMENT
from mlflow_operator.handlers.registeredmodel import REGISTERED_MODEL
from mlflow_operator.handlers.trainingrun import TRAINING_RUN, _reconcile
from mlflow_operator.handlers.trainingsweep import TRAINING_SWEEP
from mlflow_operator.logic import timestamps
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.scheduling.priority import URGENT
from mlflow_operator.tracking.entities import ExperimentInfo, TrackingTarget

from fakes import TEST_KEYS, Crash, FakeKube, FakeMlflow, Writes

NAMESPACE, NAME, MODEL = "team-a", "churn-rf", "churn"
LOGGER = logging.getLogger("crash-test")
TARGET = TrackingTarget("http://mlflow:5000")


@dataclass
class World:
    writes: Writes
    kube: FakeKube
    mlflow: FakeMlflow
    memo: dict[str, Any]

    @property
    def status(self) -> dict[str, Any]:
        return self.kube.objects[("trainingruns", NAMESPACE, NAME)].get("status") or {}

    def restart_operator(self) -> None:
        """What a new process has: nothing in memory, everything stored."""
        self.memo["objects"] = {}
        self.memo["services"] = Services(self.memo["services"].config, self.mlflow, self.kube)

    def job_controller_and_container(self) -> None:
        """A Job that exists runs its container: it logs the model into the run it was
        started for, ends it FINISHED, and the Job completes."""
        self.run_job(NAME)

    def run_job(self, name: str) -> None:
        job = self.kube.jobs.get((NAMESPACE, name))
        if job is None or job.finished is not None or job.deleting:
            return
        if not self.kube.pods.get(NAMESPACE):
            self.kube.run_pod(NAMESPACE, name)
        run_id = job.labels[LABEL_RUN_ID]
        self.mlflow.container_logs_model(run_id)
        self.kube.finish_job(NAMESPACE, name)


def new_world() -> World:
    writes = Writes()
    kube, mlflow = FakeKube(writes), FakeMlflow(writes)
    mlflow.experiments["1"] = ExperimentInfo("1", f"{NAMESPACE}/exp", "active", None,
                                             {"k8s.namespace": NAMESPACE, "k8s.name": "exp"})
    kube.add_object("experiments", {
        "metadata": {"namespace": NAMESPACE, "name": "exp"},
        "spec": {},
        "status": {"experimentId": "1", "experimentName": f"{NAMESPACE}/exp", "trackingUri": "http://mlflow:5000",
                   "conditions": [{"type": "Ready", "status": "True", "reason": "Reconciled"}]},
    })
    kube.add_object("trainingruns", {
        "apiVersion": "mlflow.operator.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"namespace": NAMESPACE, "name": NAME},
        "spec": {
            "experimentRef": {"name": "exp"},
            "params": {"n_estimators": "20"},
            "template": {"spec": {"containers": [{"name": "train", "image": "churn-train:1"}]}},
            "registerModel": {"name": MODEL, "aliases": ["champion"]},
        },
    })
    services = Services(OperatorConfig(default_tracking_uri="http://mlflow:5000", ownership_keys=TEST_KEYS), mlflow, kube)
    return World(writes, kube, mlflow, {"services": services, "objects": {}})


@pytest.fixture(autouse=True)
def events_posted(monkeypatch) -> list:
    """kopf posts Events only inside a running operator: collect them instead."""
    posted: list = []
    monkeypatch.setattr(handlers_common, "post_events", lambda body, events: posted.extend(events))
    return posted


async def run_to_the_end(world: World, steps: int = 25) -> None:
    """Reconcile as the operator's watches would, restarting it whenever it crashes."""
    for _ in range(steps):
        body = world.kube.objects[("trainingruns", NAMESPACE, NAME)]
        try:
            await _reconcile({"metadata": dict(body["metadata"])}, world.memo, LOGGER, retry=None)
        except Crash:
            world.restart_operator()
            continue
        world.job_controller_and_container()
        if world.status.get("phase") == "Succeeded" and world.status.get("modelVersion"):
            return
    raise AssertionError(f"no end after {steps} reconciles; status {world.status}")


def test_a_run_created_by_a_process_that_skipped_the_search_is_found_by_the_next_one():
    """The first process saw the object created after it started and skipped the search by
    uid tag; it dies right after creating the run. The next process started later than the
    object was created, so it searches, and finds that run."""
    world = new_world()
    body = world.kube.objects[("trainingruns", NAMESPACE, NAME)]
    body["metadata"]["creationTimestamp"] = timestamps.now_rfc3339()
    world.memo["services"] = Services(world.memo["services"].config, world.mlflow, world.kube,
                                      caches=Caches(started_at=time.time() - 3600))
    world.writes.crash_at = 1  # create_run
    asyncio.run(run_to_the_end(world))
    assert world.writes.log[0] == "create_run"
    uid = body["metadata"]["uid"]
    assert len([r for r in world.mlflow.runs.values() if r.tags.get(TAG_UID) == uid]) == 1
    assert world.status["phase"] == "Succeeded"


def test_a_process_that_skipped_the_search_makes_no_search_when_it_starts_a_run():
    world = new_world()
    world.kube.objects[("trainingruns", NAMESPACE, NAME)]["metadata"]["creationTimestamp"] = timestamps.now_rfc3339()
    world.memo["services"] = Services(world.memo["services"].config, world.mlflow, world.kube,
                                      caches=Caches(started_at=time.time() - 3600))
    asyncio.run(run_to_the_end(world))
    assert world.mlflow.calls.count("find_runs_by_tag") == 1  # closing the run only


def clean_lifecycle_writes() -> list[str]:
    world = new_world()
    asyncio.run(run_to_the_end(world))
    return world.writes.log


def test_a_clean_lifecycle_makes_each_external_write_once():
    writes = clean_lifecycle_writes()
    assert [w for w in writes if not w.startswith("patch_status")] == [
        # The container ended the run FINISHED and the Job succeeded: no status write to MLflow.
        # The Job keeps its finalizer until the TrainingRun is deleted: no write to let it go.
        "create_run", "log_params_and_tags", "create_job churn-rf",
        # What the run ran on (pod, node, image digest), from the Job's pod, when it is closed.
        "log_params_and_tags",
        f"create_registered_model {MODEL}", f"create_model_version {MODEL}", "set_alias champion",
        # The alias move's audit record on the version (when, by whom, the previous holder).
        *(f"set_model_version_tag mlflow.operator.dev/alias.champion.{key}" for key in ("at", "by", "previous")),
    ]
    # Three status writes: the start (run and Job), the Job's outcome with the run closed (a
    # checkpoint before registering), the registered version: the crash test covers all 13.
    assert len(writes) == 13


def test_a_crash_after_any_write_leaves_one_run_one_job_one_version_and_success():
    count = len(clean_lifecycle_writes())
    for crash_at in range(1, count + 1):
        world = new_world()
        world.writes.crash_at = crash_at
        asyncio.run(run_to_the_end(world))
        crashed_after = world.writes.log[crash_at - 1]
        context = f"crash after write {crash_at} ({crashed_after})"
        uid = world.kube.objects[("trainingruns", NAMESPACE, NAME)]["metadata"]["uid"]
        runs = [r for r in world.mlflow.runs.values() if r.tags.get(TAG_UID) == uid]
        assert len(runs) == 1, context
        assert world.kube.jobs_created <= 1, context
        assert [v.version for v in world.mlflow.versions[MODEL]] == ["1"], context
        assert world.mlflow.models[MODEL].aliases == {"champion": "1"}, context
        status = world.status
        assert (status["phase"], status["runStatus"], status["runId"]) == ("Succeeded", "FINISHED", runs[0].run_id), \
            context
        assert runs[0].status == "FINISHED" and runs[0].params == {"n_estimators": "20"}, context
        assert status["modelVersion"]["version"] == "1", context


def distributed_world() -> World:
    world = new_world()
    world.kube.objects[("trainingruns", NAMESPACE, NAME)]["spec"]["distributed"] = {"nodes": 4}
    return world


def test_a_crash_after_any_write_of_a_distributed_run_leaves_one_service_one_job_and_one_run():
    clean = distributed_world()
    asyncio.run(run_to_the_end(clean))
    assert [w for w in clean.writes.log if not w.startswith("patch_status")][:4] == [
        "create_run", "log_params_and_tags", f"create_service {NAME}", f"create_job {NAME}"]
    for crash_at in range(1, len(clean.writes.log) + 1):
        world = distributed_world()
        world.writes.crash_at = crash_at
        asyncio.run(run_to_the_end(world))
        context = f"crash after write {crash_at} ({world.writes.log[crash_at - 1]})"
        uid = world.kube.objects[("trainingruns", NAMESPACE, NAME)]["metadata"]["uid"]
        assert len([r for r in world.mlflow.runs.values() if r.tags.get(TAG_UID) == uid]) == 1, context
        assert world.kube.jobs_created <= 1 and list(world.kube.services) == [(NAMESPACE, NAME)], context
        assert world.status["phase"] == "Succeeded", context


def test_a_service_of_the_runs_name_that_it_does_not_control_stops_the_run_before_its_job():
    world = distributed_world()
    world.kube.services[(NAMESPACE, NAME)] = {"metadata": {"name": NAME, "ownerReferences": [
        {"kind": "TrainingRun", "name": NAME, "uid": "someone-else", "controller": True}]}}
    body = world.kube.objects[("trainingruns", NAMESPACE, NAME)]
    asyncio.run(_reconcile({"metadata": dict(body["metadata"])}, world.memo, LOGGER, retry=None))
    ready = next(c for c in world.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "JobConflict" and "Service" in ready["message"]
    assert world.kube.jobs_created == 0


# --------------------------------------------------------------------------- the synced kinds

SYNCED: dict[str, tuple[handlers_common.Kind[Any, Any], dict[str, Any]]] = {
    "experiments": (EXPERIMENT, {"name": "team-a/churn", "tags": {"team": "a"}}),
    "registeredmodels": (REGISTERED_MODEL, {"name": "fraud", "description": "fraud detector", "tags": {"team": "a"}}),
}


def synced_world(plural: str) -> World:
    world = new_world()
    kind, spec = SYNCED[plural]
    world.kube.add_object(plural, {"apiVersion": "mlflow.operator.dev/v1alpha1", "kind": kind.name,
                                   "metadata": {"namespace": NAMESPACE, "name": "synced"}, "spec": spec})
    world.writes.log.clear()
    return world


async def reconcile_synced_until_ready(world: World, plural: str, steps: int = 10) -> dict[str, Any]:
    kind, _ = SYNCED[plural]
    for _ in range(steps):
        body = world.kube.objects[(plural, NAMESPACE, "synced")]
        try:
            await handlers_common.reconcile_and_report(kind, body={"metadata": dict(body["metadata"])},
                                                       memo=world.memo, logger=LOGGER, retry=None)
        except Crash:
            world.restart_operator()
            continue
        status = world.kube.objects[(plural, NAMESPACE, "synced")].get("status") or {}
        if any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []):
            return status
    raise AssertionError(f"{plural}: not Ready after {steps} reconciles")


def entities_of(world: World, plural: str) -> list[Any]:
    if plural == "experiments":
        return [e for e in world.mlflow.experiments.values() if e.name == "team-a/churn"]
    return [m for m in world.mlflow.models.values() if m.name == "fraud"]


@pytest.mark.parametrize("plural", sorted(SYNCED))
def test_a_crash_after_any_write_of_a_synced_kind_leaves_one_owned_entity_and_ready(plural):
    clean = synced_world(plural)
    asyncio.run(reconcile_synced_until_ready(clean, plural))
    assert clean.writes.log, "the first reconcile writes to MLflow and to status"
    for crash_at in range(1, len(clean.writes.log) + 1):
        world = synced_world(plural)
        world.writes.crash_at = crash_at
        status = asyncio.run(reconcile_synced_until_ready(world, plural))
        context = f"{plural}: crash after write {crash_at} ({world.writes.log[crash_at - 1]})"
        [entity] = entities_of(world, plural)
        uid = world.kube.objects[(plural, NAMESPACE, "synced")]["metadata"]["uid"]
        assert entity.tags.get(TAG_UID) == uid and entity.tags.get("team") == "a", context
        if plural == "experiments":
            assert status["experimentId"] == entity.experiment_id, context
        else:
            assert status["modelName"] == "fraud" and entity.description == "fraud detector", context


def test_the_mlflow_calls_that_start_a_run_go_first_and_those_after_its_job_do_not(monkeypatch):
    """Fakes: what makes a call urgent is the context it is made in, which a real server
    cannot see (it sees only the order calls arrive in, which depends on timing)."""
    world = new_world()
    urgent_writes: dict[str, bool] = {}
    record = world.writes.record

    def record_with_priority(what: str) -> None:
        urgent_writes.setdefault(what, URGENT.get())
        record(what)

    monkeypatch.setattr(world.writes, "record", record_with_priority)
    asyncio.run(run_to_the_end(world))
    assert urgent_writes["create_run"] is True
    assert urgent_writes["log_params_and_tags"] is True  # its params, with the create
    assert urgent_writes[f"create_model_version {MODEL}"] is False  # after the Job ended


def deleting_with_run(world: World, run_id: str) -> None:
    """The TrainingRun being deleted, started, its status naming `run_id`."""
    body = world.kube.objects[("trainingruns", NAMESPACE, NAME)]
    body["metadata"]["deletionTimestamp"] = timestamps.now_rfc3339()
    body["status"] = {"phase": "Running", "runId": run_id, "experimentId": "1", "experimentName": f"{NAMESPACE}/exp",
                      "trackingUri": "http://mlflow:5000"}


def world_uid(world: World) -> str:
    return str(world.kube.objects[("trainingruns", NAMESPACE, NAME)]["metadata"]["uid"])


async def delete_until_done(world: World, kind: handlers_common.Kind[Any, Any], plural: str, name: str,
                            steps: int = 10) -> None:
    """Run the kind's deletion step as kopf would: again after a retry, or after a crash in
    a new process, until it lets the object go."""
    for retry in range(steps):
        body = copy.deepcopy(world.kube.objects[(plural, NAMESPACE, name)])
        body["metadata"].setdefault("deletionTimestamp", timestamps.now_rfc3339())
        try:
            await handlers_common.delete_and_report(kind, body=body, memo=world.memo, logger=LOGGER, retry=retry)
            return
        except Crash:
            world.restart_operator()
        except kopf.TemporaryError:
            pass
    raise AssertionError(f"{plural}/{name}: deletion not done after {steps} attempts")


def test_deleting_a_run_whose_status_names_another_objects_run_touches_no_run(events_posted):
    """Status is the operator's, but the run it names must still say it is this object's:
    a run tagged with another uid is refused (RunConflict) and left RUNNING."""
    world = new_world()
    theirs = asyncio.run(world.mlflow.create_run(TARGET, "1", "theirs", {TAG_UID: "another-uid"}, 0))
    deleting_with_run(world, theirs.run_id)
    asyncio.run(delete_until_done(world, TRAINING_RUN, "trainingruns", NAME))
    [abandoned] = [e for e in events_posted if e[1] == "CleanupAbandoned"]
    assert "RunConflict" in abandoned[2]
    assert world.mlflow.runs[theirs.run_id].status == "RUNNING"


def test_deleting_a_run_whose_status_names_a_run_of_another_experiment_touches_it_not_even_with_its_uid_tag(
        events_posted):
    """Anyone who reaches a server without workspaces can tag any run with this object's uid;
    no tag moves a run out of another namespace's experiment, so that run is refused too."""
    world = new_world()
    theirs = asyncio.run(world.mlflow.create_run(TARGET, "2", "theirs", {TAG_UID: world_uid(world)}, 0))
    deleting_with_run(world, theirs.run_id)
    asyncio.run(delete_until_done(world, TRAINING_RUN, "trainingruns", NAME))
    [abandoned] = [e for e in events_posted if e[1] == "CleanupAbandoned"]
    assert "RunConflict" in abandoned[2] and "experiment 2" in abandoned[2]
    assert world.mlflow.runs[theirs.run_id].status == "RUNNING"


def test_deleting_a_run_whose_mlflow_run_was_deleted_by_hand_leaves_quietly(events_posted):
    world = new_world()
    uid = world.kube.objects[("trainingruns", NAMESPACE, NAME)]["metadata"]["uid"]
    ours = asyncio.run(world.mlflow.create_run(TARGET, "1", NAME, {TAG_UID: uid}, 0))
    asyncio.run(world.mlflow.delete_run(TARGET, ours.run_id))
    deleting_with_run(world, ours.run_id)
    asyncio.run(delete_until_done(world, TRAINING_RUN, "trainingruns", NAME))
    assert [e[1] for e in events_posted] == ["Killed"]
    assert world.mlflow.runs[ours.run_id].status == "RUNNING"  # deleted in MLflow: nothing to close




# --------------------------------------------------------------------------- TrainingSweep

SWEEP, BEST_MODEL = "sweep", "churn-best"


def sweep_world() -> World:
    world = new_world()
    del world.kube.objects[("trainingruns", NAMESPACE, NAME)]
    world.kube.add_object("trainingsweeps", {
        "apiVersion": "mlflow.operator.dev/v1alpha1", "kind": "TrainingSweep",
        "metadata": {"namespace": NAMESPACE, "name": SWEEP},
        "spec": {
            "experimentRef": {"name": "exp"},
            "parameters": {"a": {"values": ["1", "2"]}},
            "objective": {"metric": "accuracy"},
            "parallelism": 2,
            "template": {"spec": {"containers": [{"name": "train", "image": "churn-train:1"}]}},
            "registerBest": {"name": BEST_MODEL, "aliases": ["champion"]},
        },
    })
    world.writes.log.clear()
    return world


def sweep_status(world: World) -> dict[str, Any]:
    return world.kube.objects[("trainingsweeps", NAMESPACE, SWEEP)].get("status") or {}


def trials_of(world: World) -> list[dict[str, Any]]:
    return [body for (plural, _, name), body in world.kube.objects.items()
            if plural == "trainingruns" and name.startswith(f"{SWEEP}-")]


async def run_sweep_to_the_end(world: World, steps: int = 30) -> None:
    """The sweep and its trials reconciled as the operator's watches would, each trial's
    container logging its objective (a/10) and model; the operator restarted after a crash."""
    for _ in range(steps):
        try:
            body = world.kube.objects[("trainingsweeps", NAMESPACE, SWEEP)]
            await handlers_common.reconcile_and_report(TRAINING_SWEEP, body={"metadata": dict(body["metadata"])},
                                                       memo=world.memo, logger=LOGGER, retry=None)
            for trial in trials_of(world):
                await handlers_common.reconcile_and_report(TRAINING_RUN, body={"metadata": dict(trial["metadata"])},
                                                           memo=world.memo, logger=LOGGER, retry=None)
        except Crash:
            world.restart_operator()
            continue
        for trial in trials_of(world):
            job = world.kube.jobs.get((NAMESPACE, trial["metadata"]["name"]))
            if job is not None and job.finished is None:
                run_id = job.labels[LABEL_RUN_ID]
                run = world.mlflow.runs[run_id]
                world.mlflow.runs[run_id] = dataclasses.replace(
                    run, metrics={"accuracy": int(trial["spec"]["params"]["a"]) / 10})
                world.run_job(trial["metadata"]["name"])
        if sweep_status(world).get("phase") == "Succeeded" and sweep_status(world).get("modelVersion"):
            return
    raise AssertionError(f"sweep: no end after {steps} rounds; status {sweep_status(world)}")


def test_a_crash_after_any_write_of_a_sweep_leaves_one_parent_run_one_run_per_trial_and_the_best_registered():
    clean = sweep_world()
    asyncio.run(run_sweep_to_the_end(clean))
    assert "create_object trainingruns/sweep-0" in clean.writes.log
    for crash_at in range(1, len(clean.writes.log) + 1):
        world = sweep_world()
        world.writes.crash_at = crash_at
        asyncio.run(run_sweep_to_the_end(world))
        context = f"sweep: crash after write {crash_at} ({world.writes.log[crash_at - 1]})"
        sweep_uid = world.kube.objects[("trainingsweeps", NAMESPACE, SWEEP)]["metadata"]["uid"]
        [parent] = [r for r in world.mlflow.runs.values() if r.tags.get(TAG_UID) == sweep_uid]
        trials = trials_of(world)
        assert sorted(t["metadata"]["name"] for t in trials) == ["sweep-0", "sweep-1"], context
        for trial in trials:
            runs = [r for r in world.mlflow.runs.values() if r.tags.get(TAG_UID) == trial["metadata"]["uid"]]
            assert len(runs) == 1 and runs[0].tags.get("mlflow.parentRunId") == parent.run_id, context
        status = sweep_status(world)
        assert status["bestTrial"]["params"] == {"a": "2"} and parent.status == "FINISHED", context
        assert [v.version for v in world.mlflow.versions[BEST_MODEL]] == ["1"], context
        assert world.mlflow.models[BEST_MODEL].aliases == {"champion": "1"}, context


# --------------------------------------------------------------------------- deletion


def started_world() -> World:
    """A TrainingRun whose Job is running (its container has not ended)."""
    world = new_world()
    body = world.kube.objects[("trainingruns", NAMESPACE, NAME)]
    asyncio.run(_reconcile({"metadata": dict(body["metadata"])}, world.memo, LOGGER, retry=None))
    assert world.kube.jobs.get((NAMESPACE, NAME)) is not None
    world.writes.log.clear()
    return world


def test_a_crash_after_any_write_of_a_training_runs_deletion_kills_its_run_once_and_lets_its_job_go(events_posted):
    clean = started_world()
    asyncio.run(delete_until_done(clean, TRAINING_RUN, "trainingruns", NAME))
    assert clean.writes.log == ["delete_job churn-rf", "remove_job_finalizer churn-rf", "set_run_status KILLED"]
    for crash_at in range(1, len(clean.writes.log) + 1):
        world = started_world()
        events_posted.clear()
        world.writes.crash_at = crash_at
        asyncio.run(delete_until_done(world, TRAINING_RUN, "trainingruns", NAME))
        context = f"crash after write {crash_at} ({world.writes.log[crash_at - 1]})"
        assert (NAMESPACE, NAME) not in world.kube.jobs, context
        run_id = world.status["runId"]
        assert world.mlflow.runs[run_id].status == "KILLED", context
        assert [e[1] for e in events_posted] == ["Killed"], context
        assert world.writes.log.count("set_run_status KILLED") == 1, context


def sweep_started_world() -> World:
    world = sweep_world()
    body = world.kube.objects[("trainingsweeps", NAMESPACE, SWEEP)]
    asyncio.run(handlers_common.reconcile_and_report(TRAINING_SWEEP, body={"metadata": dict(body["metadata"])},
                                                     memo=world.memo, logger=LOGGER, retry=None))
    assert sweep_status(world).get("parentRunId")
    world.writes.log.clear()
    return world


def test_a_crash_after_any_write_of_a_sweeps_deletion_kills_its_parent_run_once(events_posted):
    clean = sweep_started_world()
    asyncio.run(delete_until_done(clean, TRAINING_SWEEP, "trainingsweeps", SWEEP))
    assert clean.writes.log == ["set_run_status KILLED"]
    for crash_at in range(1, len(clean.writes.log) + 1):
        world = sweep_started_world()
        events_posted.clear()
        world.writes.crash_at = crash_at
        asyncio.run(delete_until_done(world, TRAINING_SWEEP, "trainingsweeps", SWEEP))
        assert world.mlflow.runs[sweep_status(world)["parentRunId"]].status == "KILLED"
        assert [e[1] for e in events_posted] == ["Killed"]


@pytest.mark.parametrize("plural", sorted(SYNCED))
def test_a_crash_after_any_write_of_a_synced_kinds_deletion_deletes_its_entity_once(plural, events_posted):
    def ready_world() -> World:
        world = synced_world(plural)
        world.kube.objects[(plural, NAMESPACE, "synced")]["spec"]["deletionPolicy"] = "Delete"
        asyncio.run(reconcile_synced_until_ready(world, plural))
        world.writes.log.clear()
        return world

    kind, _ = SYNCED[plural]
    clean = ready_world()
    events_posted.clear()
    asyncio.run(delete_until_done(clean, kind, plural, "synced"))
    assert len(clean.writes.log) == 1 and clean.writes.log[0].startswith("delete_")
    assert [e[1] for e in events_posted] == ["Deleted"]
    for crash_at in range(1, len(clean.writes.log) + 1):
        world = ready_world()
        events_posted.clear()
        world.writes.crash_at = crash_at
        asyncio.run(delete_until_done(world, kind, plural, "synced"))
        assert [e for e in entities_of(world, plural) if not getattr(e, "deleted", False)] == []
        # The process that deleted it died before saying so; the next finds nothing to delete.
        assert events_posted == []
