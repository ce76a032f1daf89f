"""Tenancy and security, against the sandbox: which servers the operator calls, which
Secrets it reads and sends, which MLflow entities a namespace may touch, and a Job's outcome
that is never lost. Servers the tests play run on 127.0.0.1; two of their ports are in the
sandbox operator's allowlist (`test-server`, `test-server-2`), any other port is not."""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import Objects, events_for, outside_workspaces, stays, wait_for
from play_training import play
from servers import RecordingServer, SilentServer, unused_port

TRAINER = [sys.executable, "-W", "ignore", str(Path(__file__).parent / "trainers" / "log_model.py")]
HOLD = {"sandbox.mlflow.operator.dev/hold": "true"}
SECRET = "AKIA-secret-from-instance-metadata"
LABEL = {"mlflow.operator.dev/credentials": "true"}


def objects(custom, namespace: str, kind: str) -> Objects:
    return Objects(custom, namespace, kind.lower() + "s", kind)


def make_secret(core, namespace: str, name: str, data: dict[str, str], labelled: bool = True) -> None:
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, labels=dict(LABEL) if labelled else {}), string_data=data))


def template(hold: bool = True) -> dict:
    return {"metadata": {"annotations": dict(HOLD) if hold else {}},
            "spec": {"containers": [{"name": "train", "image": "trainer:1"}]}}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def everything_shown(core, namespace: str, name: str, obj: dict) -> str:
    """What a user can read about an object: its status and its Events."""
    return str(obj.get("status")) + " ".join(e.message or "" for e in events_for(core, namespace, name))


def wait_phase(runs: Objects, name: str, phase: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (lambda o: o if (o.get("status") or {}).get("phase") == phase else None)(runs.get(name)),
                    timeout=timeout, message=f"TrainingRun {name} phase {phase}")


# --------------------------------------------------------------------------- servers


def test_a_server_outside_the_allowlist_is_sent_nothing(experiments, core, namespace):
    make_secret(core, namespace, "creds", {"token": SECRET})
    with RecordingServer(unused_port()) as server:
        experiments.create("ssrf", {"tracking": {"uri": f"http://127.0.0.1:{server.port}/api",
                                                 "secretRef": {"name": "creds"}}})
        condition = experiments.wait_reason("ssrf", "TrackingServerNotAllowed")
        assert experiments.condition("ssrf", "Stalled")["status"] == "True"
        assert "allowlist" in condition["message"]
        assert stays(lambda: not server.requests, duration=3)


def test_a_reply_body_never_reaches_status_events_or_the_log(experiments, core, namespace, sandbox):
    path = f"/{namespace}"
    with RecordingServer(sandbox.ports["test-server"], status=200, body=SECRET) as server:
        experiments.create("echo", {"tracking": {"uri": f"http://127.0.0.1:{server.port}{path}"}})
        condition = experiments.wait_reason("echo", "TrackingRejected")
        assert server.under(path), "the allowlisted server was called"
    assert "HTTP 200" in condition["message"] and "MLflow" in condition["message"]
    assert experiments.condition("echo", "Stalled")["status"] == "True"  # a refusal is not retried as an outage
    shown = everything_shown(core, namespace, "echo", experiments.get("echo"))
    assert SECRET not in shown
    assert SECRET not in (sandbox.state / "logs" / "operator.log").read_text()


def test_an_error_reply_is_reported_by_status_code_not_by_its_body(experiments, core, namespace, sandbox):
    port = sandbox.ports["test-server"]
    with RecordingServer(port, status=502, body=SECRET):
        experiments.create("gateway", {"tracking": {"uri": f"http://127.0.0.1:{port}/{namespace}"}})
        condition = experiments.wait_reason("gateway", "TrackingUnavailable")
    assert "5xx" in condition["message"] or "HTTP 502" in condition["message"]
    assert SECRET not in everything_shown(core, namespace, "gateway", experiments.get("gateway"))


def test_a_redirect_to_another_server_is_not_followed(experiments, core, namespace, sandbox):
    """An allowlisted server cannot send the operator, or its credentials, anywhere else."""
    make_secret(core, namespace, "creds", {"token": SECRET})
    port = sandbox.ports["test-server"]
    with RecordingServer(unused_port()) as elsewhere, \
            RecordingServer(port, status=307, location=f"http://127.0.0.1:{elsewhere.port}/api"):
        experiments.create("redirect", {"tracking": {"uri": f"http://127.0.0.1:{port}/{namespace}",
                                                     "secretRef": {"name": "creds"}}})
        condition = experiments.wait_reason("redirect", "TrackingRejected")
        assert "HTTP 307" in condition["message"]
        assert stays(lambda: not elsewhere.requests, duration=3)


@pytest.mark.parametrize("uri", [
    "http://169.254.169.254/latest/meta-data/iam?/api/2.0/mlflow",
    "http://127.0.0.1:5000#/api/2.0",
    "http://user:pw@127.0.0.1:5000",
])
def test_a_uri_with_query_fragment_or_user_info_is_refused_at_admission(experiments, uri):
    with pytest.raises(ApiException) as raised:
        experiments.create("bad-uri", {"tracking": {"uri": uri}})
    assert raised.value.status == 422
    assert "no user info (user@), query (?) or fragment (#)" in raised.value.body


# --------------------------------------------------------------------------- secrets


def test_a_secret_without_the_opt_in_label_is_never_read_or_sent(experiments, core, namespace, sandbox):
    make_secret(core, namespace, "sa-like", {"token": SECRET}, labelled=False)
    path = f"/{namespace}"
    with RecordingServer(sandbox.ports["test-server"]) as server:
        experiments.create("consent", {"tracking": {"uri": f"http://127.0.0.1:{server.port}{path}",
                                                    "secretRef": {"name": "sa-like"}}})
        condition = experiments.wait_reason("consent", "SecretNotAllowed")
        assert "mlflow.operator.dev/credentials=true" in condition["message"]
        assert stays(lambda: not server.under(path), duration=3)
        # The owner consents: from then on (and only then) the credentials are sent.
        core.patch_namespaced_secret("sa-like", namespace, {"metadata": {"labels": LABEL}})
        wait_for(lambda: server.under(path), timeout=30, message="a request once the Secret is labelled")
        assert server.under(path)[0].headers.get("Authorization") == f"Bearer {SECRET}"
    assert SECRET not in everything_shown(core, namespace, "consent", experiments.get("consent"))


# --------------------------------------------------------------------------- entities


# On the server without workspaces, where names are shared and the tag rules decide; on the
# workspace server each namespace has its own names (tests/e2e/test_workspaces.py).


def test_namespace_b_cannot_adopt_or_delete_namespace_as_model(custom, namespace, other_namespace, sandbox,
                                                               open_mlflow_client):
    name = unique("shared-model")
    open_server = {"uri": sandbox.open_tracking_uri}
    mine = objects(custom, namespace, "RegisteredModel")
    mine.create("model", {"name": name, "tracking": open_server})
    mine.wait_ready("model")
    theirs = objects(custom, other_namespace, "RegisteredModel")
    theirs.create("grab", {"name": name, "adopt": True, "deletionPolicy": "Delete", "description": "mine now",
                           "tracking": open_server})
    condition = theirs.wait_reason("grab", "Conflict")
    assert namespace in condition["message"]
    theirs.delete("grab")
    wait_for(lambda: not theirs.exists("grab"), timeout=30, message="B's object to go")
    model = open_mlflow_client.get_registered_model(name)
    assert model.tags["k8s.namespace"] == namespace and model.description != "mine now"


def test_namespace_b_cannot_register_into_namespace_as_model(custom, namespace, other_namespace, sandbox,
                                                             open_mlflow_client):
    name = unique("guarded")
    open_server = {"uri": sandbox.open_tracking_uri}
    mine = objects(custom, namespace, "RegisteredModel")
    mine.create("model", {"name": name, "tracking": open_server})
    mine.wait_ready("model")
    theirs = objects(custom, other_namespace, "TrainingRun")
    theirs.create("sneak", {"experimentName": unique("b-exp"), "template": template(), "tracking": open_server,
                            "registerModel": {"name": name, "aliases": ["champion"]}})
    assert play(other_namespace, "sneak", TRAINER + ["--model-name", "model"]) == 0
    condition = theirs.wait_reason("sneak", "Conflict", timeout=60)
    assert namespace in condition["message"]
    assert open_mlflow_client.search_model_versions(f"name = '{name}'") == []


def test_an_experiment_created_outside_the_operator_needs_spec_adopt(experiments, mlflow_client):
    name = unique("hand-made")
    experiment_id = mlflow_client.create_experiment(name)
    experiments.create("hands-off", {"name": name})
    assert "spec.adopt: true" in experiments.wait_reason("hands-off", "Conflict")["message"]
    experiments.patch_spec("hands-off", {"adopt": True})
    status = experiments.wait_ready("hands-off")["status"]
    assert status["experimentId"] == experiment_id


def test_a_training_run_cannot_log_into_another_namespaces_experiment(custom, namespace, other_namespace, sandbox):
    mine = objects(custom, namespace, "Experiment")
    mine.create("exp", {"tracking": {"uri": sandbox.open_tracking_uri}})
    taken = mine.wait_ready("exp")["status"]["experimentName"]
    theirs = objects(custom, other_namespace, "TrainingRun")
    with pytest.raises(ApiException) as refused:  # the chart's admission policy, as installed by default
        theirs.create("intruder", {"experimentName": taken, "template": template(hold=False)})
    assert "another namespace's prefix" in refused.value.body


# --------------------------------------------------------------------------- a Job's outcome


def stop_operator(sandbox) -> None:
    result = sandbox.sandbox("stop", "operator")
    assert result.returncode == 0, result.stdout + result.stderr


def start_operator(sandbox) -> None:
    result = sandbox.sandbox("up")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_job_ttl_deleted_while_the_operator_is_down_still_ends_finished_and_registered(
    runs, namespace, sandbox, batch, mlflow_client
):
    model_name = unique("ttl-model")
    runs.create("ttl", {"experimentName": unique("ttl"), "ttlSecondsAfterFinished": 0, "template": template(),
                        "registerModel": {"name": model_name, "aliases": ["champion"]}})
    run_id = wait_phase(runs, "ttl", "Running")["status"]["runId"]
    stop_operator(sandbox)
    try:
        assert play(namespace, "ttl", TRAINER + ["--model-name", "model"]) == 0
        # The TTL controller deletes the finished Job; the operator's finalizer keeps it.
        job = wait_for(lambda: (lambda j: j if j.metadata.deletion_timestamp else None)(
            batch.read_namespaced_job("ttl", namespace)), timeout=60, message="the TTL controller to delete the Job")
        assert "mlflow.operator.dev/job-outcome" in job.metadata.finalizers
    finally:
        start_operator(sandbox)
    status = runs.wait_ready("ttl", timeout=90)["status"]
    assert (status["phase"], status["runStatus"]) == ("Succeeded", "FINISHED")
    assert mlflow_client.get_run(run_id).info.status == "FINISHED"
    assert mlflow_client.get_model_version_by_alias(model_name, "champion").run_id == run_id
    wait_for(lambda: not batch.list_namespaced_job(namespace).items, timeout=30, message="the Job to go")


# --------------------------------------------------------------------------- medium points


def test_the_tracking_server_is_pinned_once_the_experiment_is_bound(experiments, sandbox):
    experiments.create("pinned", {})
    before = experiments.wait_ready("pinned")["status"]
    assert before["trackingUri"] == sandbox.tracking_uri
    experiments.patch_spec("pinned", {"tracking": {"uri": sandbox.auth_tracking_uri}})
    condition = experiments.wait_reason("pinned", "TrackingServerChanged")
    assert sandbox.tracking_uri in condition["message"]
    assert experiments.get("pinned")["status"]["experimentId"] == before["experimentId"]


def test_deleting_an_experiment_waits_for_its_open_runs(experiments, runs, core, namespace, mlflow_client):
    experiments.create("exp", {"deletionPolicy": "Delete"})
    experiment_id = experiments.wait_ready("exp")["status"]["experimentId"]
    runs.create("open", {"experimentRef": {"name": "exp"}, "template": template()})
    run_id = wait_phase(runs, "open", "Running")["status"]["runId"]
    experiments.delete("exp")
    wait_for(lambda: "WaitingForRuns" in [e.reason for e in events_for(core, namespace, "exp")], timeout=30,
             message="a WaitingForRuns event")
    assert mlflow_client.get_experiment(experiment_id).lifecycle_stage == "active"
    assert play(namespace, "open", TRAINER) == 0
    wait_phase(runs, "open", "Succeeded")
    assert mlflow_client.get_run(run_id).info.status == "FINISHED"
    wait_for(lambda: not experiments.exists("exp"), timeout=60, message="the Experiment to be deleted")
    assert mlflow_client.get_experiment(experiment_id).lifecycle_stage == "deleted"


@pytest.mark.parametrize("key", ["lr/", "a//b", "./x", "/abs", "x/../y"])
def test_params_mlflow_would_refuse_are_refused_at_admission(runs, key):
    with pytest.raises(ApiException) as raised:
        runs.create("badparam", {"experimentName": "e", "params": {key: "1"}, "template": template()})
    assert raised.value.status == 422 and "MLflow reads keys as paths" in raised.value.body


def auth_run_status(sandbox, run_id: str) -> str:
    import os

    from mlflow import MlflowClient

    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", sandbox.auth_admin_password
    try:
        with outside_workspaces():
            return MlflowClient(sandbox.auth_tracking_uri).get_run(run_id).info.status
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]


def test_deleting_a_namespace_closes_its_runs_promptly_though_its_secret_goes_first(core, custom, sandbox):
    namespace = f"t-doomed-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    wait_for(lambda: core.read_namespaced_service_account("default", namespace), timeout=30)
    make_secret(core, namespace, "admin-creds", {"username": "admin", "password": sandbox.auth_admin_password})
    runs = objects(custom, namespace, "TrainingRun")
    runs.create("doomed", {"experimentName": unique("doomed"), "template": template(),
                           "tracking": {"uri": sandbox.auth_tracking_uri, "secretRef": {"name": "admin-creds"}}})
    run_id = wait_phase(runs, "doomed", "Running")["status"]["runId"]
    core.delete_namespace(namespace)

    def gone() -> bool:
        try:
            core.read_namespace(namespace)
            return False
        except ApiException as error:
            return error.status == 404

    wait_for(gone, timeout=90, message=f"namespace {namespace} to be deleted")
    assert auth_run_status(sandbox, run_id) == "KILLED"


def test_a_model_name_with_a_quote_finds_its_versions(models, mlflow_client):
    name = unique("bob's model")
    mlflow_client.create_registered_model(name)
    run = mlflow_client.create_run(mlflow_client.create_experiment(unique("quotes")))
    mlflow_client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
    models.create("quoted", {"name": name, "adopt": True, "aliases": {"champion": "1"}})
    status = models.wait_ready("quoted")["status"]
    assert [v["version"] for v in status["versions"]] == ["1"]
    assert mlflow_client.get_model_version_by_alias(name, "champion").version == "1"


def test_one_server_that_stops_answering_does_not_starve_the_others(experiments, sandbox):
    with SilentServer(sandbox.ports["test-server-2"]) as silent:
        for i in range(12):
            experiments.create(f"stuck-{i}", {"tracking": {"uri": f"http://127.0.0.1:{silent.port}"}})
        wait_for(lambda: silent.accepted >= 8, timeout=30, message="the silent server to hold requests")
        started = time.monotonic()
        experiments.create("healthy", {})
        experiments.wait_ready("healthy", timeout=20)
        assert time.monotonic() - started < 20


def test_a_recorded_run_id_wins_over_an_older_run_with_the_same_tag(runs, namespace, sandbox, mlflow_client):
    """As after a peering hand-over: another run tagged with the object's uid appears, older
    than the recorded one. The recorded run stays the object's run and the other is left."""
    runs.create("handover", {"experimentName": unique("handover"), "template": template()})
    status = wait_phase(runs, "handover", "Running")["status"]
    uid = runs.get("handover")["metadata"]["uid"]
    older = mlflow_client.create_run(status["experimentId"], start_time=1,
                                     tags={"k8s.uid": uid, "k8s.namespace": namespace})
    stop_operator(sandbox)
    start_operator(sandbox)
    assert play(namespace, "handover", TRAINER) == 0
    final = runs.wait_ready("handover", timeout=60)["status"]
    assert final["runId"] == status["runId"]
    assert mlflow_client.get_run(status["runId"]).info.status == "FINISHED"
    assert mlflow_client.get_run(older.info.run_id).info.lifecycle_stage == "active"


def test_the_api_server_is_trusted_with_the_cluster_ca_alone(sandbox, monkeypatch):
    """The gateway's connections verify the API server with the CA its login names, not
    also with the public CAs a TLS library would add (any of them could vouch for it)."""
    import asyncio

    from mlflow_operator.gateways.kubernetes import KubernetesGateway

    monkeypatch.setenv("KUBECONFIG", str(sandbox.kubeconfig))
    gateway = KubernetesGateway()
    try:
        asyncio.run(gateway.get_object("trainingruns", "default", "absent"))  # opens a connection
        adapter = gateway._http.get_adapter("https://")
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        context = adapter.poolmanager.connection_pool_kw["ssl_context"]
        assert context.cert_store_stats()["x509_ca"] == 1  # the sandbox's cluster CA
    finally:
        gateway.close()


def test_a_status_write_decided_on_a_stale_read_is_refused(runs, sandbox, monkeypatch):
    """The gateway's precondition, against the real API server: a write carrying the
    resourceVersion of an older read gets 409 instead of landing."""
    import asyncio

    from mlflow_operator.gateways.kubernetes import KubernetesError, KubernetesGateway

    runs.create("stale", {"experimentName": unique("stale"), "template": template()})
    seen = runs.get("stale")["metadata"]["resourceVersion"]
    runs.patch_status("stale", {"url": "http://changed-meanwhile"})
    monkeypatch.setenv("KUBECONFIG", str(sandbox.kubeconfig))  # the gateway logs in as kopf does
    gateway = KubernetesGateway()

    async def write(resource_version: str) -> dict[str, Any]:
        return await gateway.patch_status("trainingruns", runs.namespace, "stale", {"primaryMetric": "x"},
                                          resource_version=resource_version)

    try:
        with pytest.raises(KubernetesError) as raised:
            asyncio.run(write(seen))
        assert raised.value.status == 409
        # With a fresh read it lands (retried: the operator may write in between, as in real life).
        wait_for(lambda: asyncio.run(write(runs.get("stale")["metadata"]["resourceVersion"])), timeout=10,
                 message="a write on a fresh read to land")
    finally:
        gateway.close()
