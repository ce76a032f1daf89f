"""What keeps a TrainingRun's lifecycle cheap: no write that changes nothing, no reconcile for
a Job update that changes nothing the operator records, no timer for closed or Stalled runs,
and Jobs read from watch events as from the API.

The reconcile test uses the in-process fakes (tests/fakes.py) to count every write exactly;
the e2e suite runs the same paths against the sandbox's API server and MLflow server."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging

from mlflow_operator.caches.jobs import HandledJobs
from mlflow_operator.cluster.snapshots import JobSnapshot
from mlflow_operator.gateways.kubernetes import job_snapshot
from mlflow_operator.handlers import common as handlers_common
from mlflow_operator.handlers.experiment import EXPERIMENT
from mlflow_operator.handlers.patches import unchanged
from mlflow_operator.handlers.trainingrun import needs_job_events, needs_refresh, open_run_copy
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.runtime.config import OperatorConfig

from fakes import TEST_KEYS, FakeKube, FakeMlflow, Writes

CLOSED = {"phase": "Succeeded", "runStatus": "FINISHED"}


def test_a_merge_patch_that_repeats_the_status_is_unchanged():
    status = {"phase": "Running", "metrics": {"loss": 0.1}, "conditions": [{"type": "Ready", "status": "False"}]}
    assert unchanged(status, {"phase": "Running", "metrics": {"loss": 0.1}})


def test_a_merge_patch_that_removes_or_changes_a_key_is_a_change():
    status = {"phase": "Running", "metrics": {"loss": 0.1}}
    assert not unchanged(status, {"metrics": {"loss": None}})
    assert not unchanged(status, {"phase": "Succeeded"})
    assert not unchanged(status, {"runId": "abc"})


def stalled(reason: str) -> dict:
    return {"conditions": [{"type": "Stalled", "status": "True", "reason": reason}], "phase": "Pending"}


def test_closed_runs_and_runs_only_a_new_spec_can_fix_are_not_refreshed_by_the_timer():
    assert not needs_refresh({"spec": {}, "status": CLOSED})
    assert not needs_refresh({"spec": {}, "status": stalled("InvalidTemplate")})
    assert needs_refresh({"spec": {}, "status": {"phase": "Running"}})


def test_a_run_waiting_for_its_model_to_be_logged_is_refreshed():
    assert needs_refresh({"spec": {"registerModel": {"name": "m"}}, "status": {**CLOSED, **stalled("ModelNotFound")}})


def test_a_succeeded_run_that_registers_a_model_is_open_until_the_version_is_recorded():
    spec = {"registerModel": {"name": "churn"}}
    assert needs_job_events({"spec": spec, "status": CLOSED})
    assert not needs_job_events({"spec": spec, "status": {**CLOSED, "modelVersion": {"version": "1"}}})


def test_a_job_update_that_changes_nothing_recorded_is_handled_once():
    handled = HandledJobs()
    running = JobSnapshot(uid="j", controller_uid="o", active=1, ready=1)
    handled.record("o", handled.signature(running, "Running"))
    assert handled.handled("o", handled.signature(running, "Running"))
    assert not handled.handled("o", handled.signature(running, "Succeeded"))
    assert not handled.handled("o", handled.signature(
        JobSnapshot(uid="j", controller_uid="o", deleting=True), "Running"))


def test_a_job_from_a_watch_event_reads_as_one_from_the_api():
    event_body = {
        "metadata": {"uid": "j", "name": "run", "namespace": "ns", "finalizers": ["f"],
                     "ownerReferences": [{"uid": "o", "controller": True}], "labels": {"a": "b"}},
        "status": {"startTime": "2026-11-23T10:00:00Z", "completionTime": "2026-11-23T10:01:00Z", "succeeded": 1,
                   "conditions": [{"type": "Complete", "status": "True"}]},
    }
    job = job_snapshot(event_body)
    assert (job.uid, job.controller_uid, job.finalizers, job.succeeded) == ("j", "o", ("f",), 1)
    assert job.finished == ("Complete", "", "") and job.completion_time is not None and not job.deleting


def test_a_reconcile_that_changes_nothing_writes_no_status(monkeypatch):
    kube, memo, _ = _experiment_memo(monkeypatch)
    writes = kube.writes

    def reconcile() -> None:
        body = kube.objects[("experiments", "ns", "e")]
        _reconcile_from({"metadata": dict(body["metadata"])}, memo)

    reconcile()
    assert any(w.startswith("patch_status") for w in writes.log)
    writes.log.clear()
    reconcile()
    assert writes.log == []


def test_the_log_has_no_line_per_job_update_or_timer_tick():
    from mlflow_operator.runtime.kopf_adapter import drop_routine_successes

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)

    assert not drop_routine_successes(record("Handler 'job' succeeded."))
    assert not drop_routine_successes(record("Timer 'refresh' succeeded."))
    assert not drop_routine_successes(record("Handler 'watch' succeeded."))
    assert drop_routine_successes(record("Handler 'reconcile' succeeded."))


def _experiment_memo(monkeypatch):
    monkeypatch.setattr(handlers_common, "post_events", lambda body, events: None)
    writes = Writes()
    kube, mlflow = FakeKube(writes), FakeMlflow(writes)
    kube.add_object("experiments", {"apiVersion": "mlflow.operator.dev/v1alpha1", "kind": "Experiment",
                                    "metadata": {"namespace": "ns", "name": "e"}, "spec": {"name": "e"}})
    reads: list[str] = []
    read = kube.get_object

    async def counted_read(plural: str, namespace: str, name: str):
        reads.append(f"{plural}/{name}")
        return await read(plural, namespace, name)

    monkeypatch.setattr(kube, "get_object", counted_read)
    memo = {"services": Services(OperatorConfig(default_tracking_uri="http://mlflow:5000", ownership_keys=TEST_KEYS), mlflow, kube),
            "objects": {}}
    return kube, memo, reads


def _reconcile_from(body: dict, memo: dict) -> None:
    asyncio.run(handlers_common.reconcile_and_report(EXPERIMENT, body=copy.deepcopy(body), memo=memo,
                                                     logger=logging.getLogger("test"), drift_check=True))


def test_a_body_that_holds_the_last_status_write_needs_no_read_after_kopf_annotates_it(monkeypatch):
    kube, memo, reads = _experiment_memo(monkeypatch)
    stored = kube.objects[("experiments", "ns", "e")]
    _reconcile_from({"metadata": dict(stored["metadata"])}, memo)  # a name and uid only: read
    assert reads == ["experiments/e"]
    # kopf records the handled spec in an annotation after the handler: a newer version.
    stored["metadata"]["annotations"] = {"kopf.zalando.org/last-handled-configuration": "{}"}
    stored["metadata"]["resourceVersion"] = "999"
    _reconcile_from(stored, memo)
    assert reads == ["experiments/e"]


def test_a_body_from_before_the_last_status_write_is_read_again(monkeypatch):
    kube, memo, reads = _experiment_memo(monkeypatch)
    before_write = copy.deepcopy(kube.objects[("experiments", "ns", "e")])
    before_write["metadata"]["resourceVersion"] = before_write["metadata"].get("resourceVersion") or "1"
    _reconcile_from({"metadata": dict(before_write["metadata"])}, memo)
    reads.clear()
    _reconcile_from(before_write, memo)  # an older watch event, delivered late
    assert reads == ["experiments/e"]


def test_an_open_run_is_kept_for_its_job_events_without_its_managed_fields():
    body = {"metadata": {"namespace": "ns", "name": "r", "uid": "u", "resourceVersion": "7",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {}, "status": {"phase": "Running", "runId": "abc"}}
    kept = open_run_copy(body)
    assert kept is not None and "managedFields" not in kept["metadata"]
    assert kept["status"] == body["status"] and kept["metadata"]["resourceVersion"] == "7"


def test_a_closed_run_is_not_kept():
    assert open_run_copy({"metadata": {"uid": "u"}, "spec": {}, "status": CLOSED}) is None


def test_an_object_deleted_before_its_status_is_written_is_left_alone(monkeypatch):
    kube, memo, reads = _experiment_memo(monkeypatch)
    body = kube.objects.pop(("experiments", "ns", "e"))  # gone (its namespace deleted, say)
    outcome = asyncio.run(handlers_common.reconcile_and_report(EXPERIMENT, body=body, memo=memo,
                                                               logger=logging.getLogger("test"), retry=0))
    assert outcome is None and reads == []


def test_a_reconcile_that_waited_for_the_deletion_leaves_the_object_alone(monkeypatch):
    # In-process fakes: the reconcile must arrive exactly while the deletion step holds the
    # object's lock, an interleaving the sandbox's API server cannot be made to show.
    kube, memo, reads = _experiment_memo(monkeypatch)
    stored = kube.objects[("experiments", "ns", "e")]
    _reconcile_from({"metadata": dict(stored["metadata"])}, memo)
    as_last_seen = copy.deepcopy(stored)  # holds the operator's last write: no read needed
    logger = logging.getLogger("test")

    async def scenario():
        in_deletion, let_go = asyncio.Event(), asyncio.Event()

        async def delete_step(ctx):
            in_deletion.set()
            await let_go.wait()  # until the reconcile below waits for the object's lock

        deleting = asyncio.create_task(handlers_common.delete_and_report(
            dataclasses.replace(EXPERIMENT, delete=delete_step), body=copy.deepcopy(stored), memo=memo,
            logger=logger, retry=0))
        await in_deletion.wait()
        reconciling = asyncio.create_task(
            handlers_common.reconcile_and_report(EXPERIMENT, body=as_last_seen, memo=memo, logger=logger))
        await asyncio.sleep(0)  # it runs until it waits: nothing before the lock awaits anything else
        assert not reconciling.done()
        let_go.set()
        await deleting
        return await reconciling

    assert asyncio.run(scenario()) is None
