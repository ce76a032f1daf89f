"""TrainingRun against the real API server, controllers, kwok nodes and MLflow server.

Pods are held Running on the kwok nodes; the test plays the training container with
sandbox/play_training.py: it runs real training code as a local process with exactly the
environment the operator gave the pod, then finishes the pod with that process's outcome.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import (
    TRAINING_CLUSTER_ROLE,
    Objects,
    bind_cluster_role,
    event_reasons,
    events_for,
    signed_by_operator,
    stays,
    wait_for,
)

# Credentials Secrets are used only with their owner's consent (this label).
CREDENTIALS_LABEL = {"mlflow.operator.dev/credentials": "true"}
from play_training import play

ROOT = Path(__file__).resolve().parents[2]
TRAINER = [sys.executable, "-W", "ignore", str(Path(__file__).parent / "trainers" / "log_model.py")]
HOLD = {"sandbox.mlflow.operator.dev/hold": "true"}


@pytest.fixture
def ready_experiment(experiments) -> dict:
    experiments.create("exp", {})
    return experiments.wait_ready("exp")


def template(args: list[str] | None = None, hold: bool = True, **container) -> dict:
    return {
        "metadata": {"annotations": dict(HOLD) if hold else {}},
        "spec": {"containers": [{"name": "train", "image": "trainer:1", "args": args or [], **container}]},
    }


def spec(**overrides) -> dict:
    base = {"experimentRef": {"name": "exp"}, "template": template()}
    base.update(overrides)
    return base


def wait_phase(runs: Objects, name: str, phase: str, timeout: float = 60) -> dict:
    return wait_for(lambda: (lambda o: o if (o.get("status") or {}).get("phase") == phase else None)(runs.get(name)),
                    timeout=timeout, message=f"TrainingRun {name} phase {phase} (now {runs.get(name).get('status')})")


def runs_tagged(mlflow_client, experiment_id: str, uid: str, view="ALL"):
    from mlflow.entities import ViewType

    return mlflow_client.search_runs([experiment_id], filter_string=f"tags.`k8s.uid` = '{uid}'",
                                     run_view_type=getattr(ViewType, view))


def jobs_of(batch, namespace: str) -> list:
    return batch.list_namespaced_job(namespace).items


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- the main paths


def test_success_path_runs_the_churn_example_and_registers_the_model(
    runs, ready_experiment, namespace, mlflow_client, batch, core
):
    model_name = unique("churn-model")
    runs.create("churn", spec(
        params={"n_estimators": "20", "max_depth": "4"},
        primaryMetric="accuracy",
        registerModel={"name": model_name, "aliases": ["challenger"], "tags": {"stage": "candidate"}},
        template=template(["--n-estimators", "$(MLFLOW_PARAM_N_ESTIMATORS)", "--max-depth", "$(MLFLOW_PARAM_MAX_DEPTH)"]),
    ))
    assert play(namespace, "churn", [sys.executable, "-W", "ignore", str(ROOT / "examples/churn/train.py")]) == 0
    obj = runs.wait_ready("churn", timeout=60)
    status = obj["status"]
    assert status["phase"] == "Succeeded" and status["runStatus"] == "FINISHED"
    run = mlflow_client.get_run(status["runId"])
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == ready_experiment["status"]["experimentId"]
    assert run.data.params == {"n_estimators": "20", "max_depth": "4"}
    assert status["metrics"]["accuracy"] == pytest.approx(run.data.metrics["accuracy"])
    assert status["primaryMetric"].startswith("accuracy=0.9")
    assert status["modelVersion"] == {"name": model_name, "version": "1", "uri": f"models:/{model_name}/1"}
    version = mlflow_client.get_model_version(model_name, "1")
    assert version.run_id == status["runId"]
    assert version.source.startswith("models:/m-")
    assert version.tags["stage"] == "candidate" and version.tags["k8s.name"] == "churn"
    assert mlflow_client.get_model_version_by_alias(model_name, "challenger").version == "1"
    import mlflow.pyfunc

    loaded = mlflow.pyfunc.load_model(f"models:/{model_name}@challenger")
    assert len(loaded.predict(__import__("sklearn.datasets").datasets.load_breast_cancer(as_frame=True).data.head(2))) == 2
    assert len(jobs_of(batch, namespace)) == 1
    # Events posted in the same second have no order: compare them as a set of reasons.
    assert sorted(event_reasons(core, namespace, "churn", kind="TrainingRun")) == [
        "JobCreated", "ModelRegistered", "Promoted", "Succeeded"]


def test_the_run_carries_its_gitops_source_and_after_the_job_its_pod_and_node(
    runs, ready_experiment, namespace, custom, mlflow_client
):
    body = {"apiVersion": "mlflow.operator.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "sourced", "annotations": {
                "mlflow.operator.dev/source-repo": "https://git.example.com/ml/runs.git",
                "mlflow.operator.dev/source-revision": "abc1234"}},
            "spec": spec(description="from the pipeline")}
    custom.create_namespaced_custom_object("mlflow.operator.dev", "v1alpha1", namespace, "trainingruns", body)
    assert play(namespace, "sourced", [sys.executable, "-c", "pass"]) == 0
    status = runs.wait_ready("sourced", timeout=60)["status"]
    tags = mlflow_client.get_run(status["runId"]).data.tags
    assert tags["mlflow.operator.dev/source-repo"] == "https://git.example.com/ml/runs.git"
    assert tags["mlflow.operator.dev/source-revision"] == "abc1234"
    assert tags["mlflow.note.content"] == "from the pipeline"
    assert tags["k8s.image"] == "trainer:1" and tags["k8s.pod"].startswith("sourced-") and tags["k8s.node"]


def test_the_job_is_wired_to_the_run_and_owned_by_the_object(runs, ready_experiment, namespace, batch):
    obj = runs.create("wired", spec(params={"alpha": "0.5"}))
    status = wait_phase(runs, "wired", "Running")["status"]
    job = batch.read_namespaced_job("wired", namespace)
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    assert env["MLFLOW_RUN_ID"] == status["runId"]
    assert env["MLFLOW_EXPERIMENT_ID"] == ready_experiment["status"]["experimentId"]
    assert env["MLFLOW_TRACKING_URI"].startswith("http://127.0.0.1:")
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert env["MLFLOW_PARAM_ALPHA"] == "0.5"
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.uid, owner.controller) == ("TrainingRun", "wired", obj["metadata"]["uid"], True)
    assert job.spec.backoff_limit == 0
    assert job.spec.template.spec.restart_policy == "Never"
    assert status["jobName"] == "wired" and status["jobUid"] == job.metadata.uid


def test_failure_path_marks_the_run_failed_even_if_the_container_closed_it_finished(
    runs, ready_experiment, namespace, mlflow_client, core
):
    runs.create("fails", spec())
    code = play(namespace, "fails", TRAINER + ["--metric", "loss=3.5", "--end-run", "FINISHED", "--exit-code", "2"])
    assert code == 2
    status = wait_phase(runs, "fails", "Failed")["status"]
    assert status["runStatus"] == "FAILED"
    assert mlflow_client.get_run(status["runId"]).info.status == "FAILED"
    assert status["metrics"] == {"loss": 3.5}
    ready = runs.condition("fails")
    assert ready["status"] == "False" and ready["reason"] == "BackoffLimitExceeded"
    assert "exited with code 1" in ready["message"]
    assert runs.condition("fails", "Stalled")["status"] == "True"
    failed_events = [e for e in events_for(core, namespace, "fails") if e.reason == "BackoffLimitExceeded"]
    assert failed_events and failed_events[0].type == "Warning"


def test_deleting_the_object_mid_run_kills_the_run_and_removes_job_and_pods(
    runs, ready_experiment, namespace, mlflow_client, batch, core
):
    runs.create("doomed", spec())
    run_id = wait_phase(runs, "doomed", "Running")["status"]["runId"]
    runs.delete("doomed")
    wait_for(lambda: not runs.exists("doomed"), timeout=30, message="object to be deleted")
    wait_for(lambda: not jobs_of(batch, namespace), timeout=30, message="the Job to be deleted")
    wait_for(lambda: not core.list_namespaced_pod(namespace).items, timeout=30, message="the pods to be deleted")
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "KILLED" and run.info.lifecycle_stage == "active"


def test_deleting_a_finished_object_keeps_the_run(runs, ready_experiment, namespace, mlflow_client):
    runs.create("done", spec(template=template(hold=False)))
    run_id = wait_phase(runs, "done", "Succeeded")["status"]["runId"]
    runs.delete("done")
    wait_for(lambda: not runs.exists("done"), timeout=30, message="object to be deleted")
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.lifecycle_stage == "active"


def test_a_run_without_a_logged_model_is_model_not_found(runs, ready_experiment, namespace, mlflow_client):
    runs.create("nomodel", spec(registerModel={"name": unique("m")}))
    assert play(namespace, "nomodel", TRAINER + ["--metric", "acc=1"]) == 0
    condition = runs.wait_reason("nomodel", "ModelNotFound")
    assert "logged no model named 'model'" in condition["message"]
    status = runs.get("nomodel")["status"]
    assert status["phase"] == "Succeeded"
    assert mlflow_client.get_run(status["runId"]).info.status == "FINISHED"


def test_register_model_picks_the_logged_model_by_artifact_path(runs, ready_experiment, namespace, mlflow_client):
    name = unique("picked")
    runs.create("picker", spec(registerModel={"name": name, "artifactPath": "clf"}))
    assert play(namespace, "picker", TRAINER + ["--model-name", "clf"]) == 0
    status = runs.wait_ready("picker")["status"]
    version = mlflow_client.get_model_version(name, status["modelVersion"]["version"])
    logged = mlflow_client.get_logged_model(version.source.removeprefix("models:/"))
    assert logged.name == "clf" and logged.source_run_id == status["runId"]


def test_live_metrics_are_copied_while_running(runs, ready_experiment, namespace, mlflow_client):
    runs.create("live", spec(primaryMetric="loss"))
    run_id = wait_phase(runs, "live", "Running")["status"]["runId"]
    mlflow_client.log_metric(run_id, "loss", 0.25)
    wait_for(lambda: (runs.get("live")["status"].get("metrics") or {}).get("loss") == 0.25, timeout=40,
             message="live metric in status")
    assert runs.get("live")["status"]["primaryMetric"] == "loss=0.25"


# --------------------------------------------------------------------------- waiting on dependencies


def test_missing_experiment_keeps_it_pending_until_the_experiment_appears(runs, experiments, batch, namespace):
    runs.create("early", spec(experimentRef={"name": "later"}, template=template(hold=False)))
    condition = runs.wait_reason("early", "ExperimentNotFound")
    assert "later" in condition["message"]
    assert runs.get("early")["status"]["phase"] == "Pending"
    assert not jobs_of(batch, namespace)
    experiments.create("later", {})
    wait_phase(runs, "early", "Succeeded", timeout=60)


def test_a_run_applied_with_its_experiment_logs_no_warning_and_posts_at_most_three_events(
        runs, experiments, core, namespace, sandbox):
    """Applied in one `kubectl apply`: waiting for the Experiment is normal progress, not a
    problem (no WARNING or ERROR line, no Warning Event, no kopf "failed temporarily")."""
    log = sandbox.state / "logs" / "operator.log"
    runs.create("quiet", spec(experimentRef={"name": "together"}, template=template(hold=False)))
    experiments.create("together", {})
    wait_phase(runs, "quiet", "Succeeded", timeout=60)
    wait_for(lambda: "Succeeded" in event_reasons(core, namespace, "quiet"), message="the Succeeded Event")
    noisy = [line for line in log.read_text().splitlines()
             if f"[{namespace}/" in line and ("[WARNING" in line or "[ERROR" in line)]
    assert noisy == []
    events = events_for(core, namespace, "quiet", kind="TrainingRun")
    assert sorted((e.type, e.reason) for e in events) == [("Normal", "JobCreated"), ("Normal", "Succeeded")]


def test_an_experiment_that_is_not_ready_holds_the_run(runs, experiments, batch, namespace, mlflow_client):
    name = unique("taken")
    mlflow_client.create_experiment(name, tags={"k8s.uid": "someone-else"})
    experiments.create("conflicted", {"name": name})
    experiments.wait_reason("conflicted", "Conflict")
    runs.create("blocked", spec(experimentRef={"name": "conflicted"}))
    condition = runs.wait_reason("blocked", "ExperimentNotReady")
    assert "Conflict" in condition["message"]
    assert not jobs_of(batch, namespace)


def test_missing_secret_keeps_it_pending_with_no_run_and_no_job(runs, namespace, batch, core, sandbox,
                                                               open_mlflow_client):
    """On the server without workspaces (credentials Secrets are for servers that take them)."""
    name = unique("secret")
    runs.create("needs-secret", {"experimentName": name, "template": template(hold=False),
                                 "tracking": {"uri": sandbox.open_tracking_uri, "secretRef": {"name": "creds"}}})
    runs.wait_reason("needs-secret", "SecretNotFound")
    assert not jobs_of(batch, namespace)
    assert open_mlflow_client.get_experiment_by_name(name) is None  # nothing at all in MLflow yet
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(labels=CREDENTIALS_LABEL, name="creds"), string_data={"token": "t0ken"}))
    wait_phase(runs, "needs-secret", "Succeeded", timeout=60)


def test_experiment_name_creates_an_unowned_experiment_if_missing(runs, namespace, mlflow_client):
    name = unique("by-name")
    runs.create("byname", {"experimentName": name, "template": template(hold=False)})
    status = wait_phase(runs, "byname", "Succeeded")["status"]
    experiment = mlflow_client.get_experiment_by_name(name)
    assert status["experimentId"] == experiment.experiment_id
    assert "k8s.uid" not in experiment.tags  # an Experiment object may still adopt it
    assert experiment.tags["k8s.createdBy"] == f"TrainingRun {namespace}/byname"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["k8s.owner-signature"].startswith("v1.")  # over its id, once created


# --------------------------------------------------------------------------- idempotency


def test_a_restart_between_run_creation_and_job_creation_makes_no_duplicate(
    runs, namespace, sandbox, core, batch, mlflow_client
):
    """The operator died after creating the MLflow run (twice: a retried POST) and before
    recording it or creating the Job. After a restart it must adopt the oldest run, retire
    the duplicate, and create exactly one Job."""
    name = unique("restart")
    experiment_id = mlflow_client.create_experiment(name, tags=signed_by_operator(
        sandbox.state, sandbox.tracking_uri, "experiment-name", name, {"k8s.namespace": namespace}))
    # Held before the start: its ServiceAccount may not log to MLflow yet.
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="late")))
    crash_template = template(hold=False)
    crash_template["spec"]["serviceAccountName"] = "late"
    runs.create("crash", {"experimentName": name, "template": crash_template})
    runs.wait_reason("crash", "ServiceAccountNotAuthorized")
    uid = runs.get("crash")["metadata"]["uid"]
    tags = {"k8s.uid": uid, "k8s.namespace": namespace, "k8s.name": "crash", "k8s.kind": "TrainingRun"}
    first = mlflow_client.create_run(experiment_id, tags=tags, run_name="crash")
    time.sleep(0.05)
    twin = mlflow_client.create_run(experiment_id, tags=tags, run_name="crash")
    kill_operator(sandbox)
    bind_cluster_role(core.api_client, namespace, TRAINING_CLUSTER_ROLE, "late", name="late-mlflow-training")
    restart_operator(sandbox)
    status = wait_phase(runs, "crash", "Succeeded", timeout=90)["status"]
    assert status["runId"] == first.info.run_id
    active = runs_tagged(mlflow_client, experiment_id, uid, view="ACTIVE_ONLY")
    assert [r.info.run_id for r in active] == [first.info.run_id]
    retired = mlflow_client.get_run(twin.info.run_id)
    assert retired.info.lifecycle_stage == "deleted"
    assert retired.data.tags["mlflow.operator.dev/duplicate-of"] == first.info.run_id
    assert len(jobs_of(batch, namespace)) == 1


def test_killing_the_operator_repeatedly_never_duplicates_runs_or_jobs(
    runs, ready_experiment, namespace, sandbox, batch, mlflow_client
):
    names = [f"storm-{i}" for i in range(6)]
    for name in names:
        runs.create(name, spec(template=template(hold=False)))
    for delay in (0.3, 0.8):
        time.sleep(delay)
        kill_operator(sandbox)
        restart_operator(sandbox)
    for name in names:
        wait_phase(runs, name, "Succeeded", timeout=90)
    experiment_id = ready_experiment["status"]["experimentId"]
    for name in names:
        obj = runs.get(name)
        active = runs_tagged(mlflow_client, experiment_id, obj["metadata"]["uid"], view="ACTIVE_ONLY")
        assert [r.info.run_id for r in active] == [obj["status"]["runId"]], name
    assert sorted(j.metadata.name for j in jobs_of(batch, namespace)) == sorted(names)


def kill_operator(sandbox) -> None:
    pid = int((sandbox.state / "pids" / "operator.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(") ")[1][:1],
             timeout=10, message="the operator to die")


def restart_operator(sandbox) -> None:
    result = sandbox.sandbox("up")
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- params, secrets, templates


def test_params_become_env_vars_even_when_keys_are_not_valid_names(runs, ready_experiment, namespace, batch,
                                                                    mlflow_client):
    params = {"learning-rate": "0.01", "n.estimators": "7", "batch size": "32", "path/x": "a b"}
    runs.create("params", spec(params=params, template=template(["--lr", "$(MLFLOW_PARAM_LEARNING_RATE)", "$$(literal)"])))
    status = wait_phase(runs, "params", "Running")["status"]
    env = {e.name: e.value for e in batch.read_namespaced_job("params", namespace).spec.template.spec.containers[0].env}
    assert env["MLFLOW_PARAM_LEARNING_RATE"] == "0.01"
    assert env["MLFLOW_PARAM_N_ESTIMATORS"] == "7"
    assert env["MLFLOW_PARAM_BATCH_SIZE"] == "32"
    assert env["MLFLOW_PARAM_PATH_X"] == "a b"
    assert play(namespace, "params", TRAINER) == 0
    run = mlflow_client.get_run(status["runId"])
    assert run.data.params == params
    assert json.loads(run.data.tags["trainer.argv"]) == ["--lr", "0.01", "$(literal)"]


def test_params_that_collide_as_env_vars_are_an_invalid_spec(runs, ready_experiment, batch, namespace, mlflow_client):
    runs.create("collide", spec(params={"a-b": "1", "a_b": "2"}))
    condition = runs.wait_reason("collide", "InvalidSpec")
    assert "MLFLOW_PARAM_A_B" in condition["message"]
    assert not jobs_of(batch, namespace)
    uid = runs.get("collide")["metadata"]["uid"]
    assert not runs_tagged(mlflow_client, ready_experiment["status"]["experimentId"], uid)


def test_secret_values_never_reach_the_job_spec_status_events_or_logs(runs, namespace, batch, core, sandbox):
    """On the server without workspaces (credentials Secrets are for servers that take them)."""
    password = f"pw-{uuid.uuid4().hex}"
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(labels=CREDENTIALS_LABEL, name="basic"), string_data={"username": "alice", "password": password}))
    runs.create("secret", {"experimentName": unique("secret"),
                           "tracking": {"uri": sandbox.open_tracking_uri, "secretRef": {"name": "basic"}},
                           "template": template(env=[{"name": "OWN", "value": "kept"}])})
    wait_phase(runs, "secret", "Running")
    job = batch.read_namespaced_job("secret", namespace)
    env = job.spec.template.spec.containers[0].env
    by_name = {e.name: e for e in env}
    assert by_name["MLFLOW_TRACKING_PASSWORD"].value is None
    assert by_name["MLFLOW_TRACKING_PASSWORD"].value_from.secret_key_ref.name == "basic"
    assert by_name["MLFLOW_TRACKING_PASSWORD"].value_from.secret_key_ref.key == "password"
    assert by_name["MLFLOW_TRACKING_USERNAME"].value_from.secret_key_ref.key == "username"
    assert by_name["OWN"].value == "kept"
    assert play(namespace, "secret", TRAINER) == 0  # the trainer authenticates with the Secret's values
    wait_phase(runs, "secret", "Succeeded")
    assert password not in json.dumps(client.ApiClient().sanitize_for_serialization(job))
    assert password not in json.dumps(runs.get("secret"))
    assert all(password not in (e.message or "") for e in events_for(core, namespace, "secret"))
    assert password not in (sandbox.state / "logs" / "operator.log").read_text()


def test_a_template_the_api_server_rejects_is_invalid_template_and_creates_no_run(
    runs, ready_experiment, namespace, batch, mlflow_client
):
    runs.create("badtemplate", spec(template=template(volumeMounts=[{"name": "data", "mountPath": "/data"}])))
    condition = runs.wait_reason("badtemplate", "InvalidTemplate")
    assert "volumeMounts[0].name: Not found" in condition["message"]
    uid = runs.get("badtemplate")["metadata"]["uid"]
    assert not runs_tagged(mlflow_client, ready_experiment["status"]["experimentId"], uid)
    assert not jobs_of(batch, namespace)


def test_a_job_deleted_by_hand_fails_the_run_as_killed(runs, ready_experiment, namespace, batch, mlflow_client):
    runs.create("orphaned", spec())
    run_id = wait_phase(runs, "orphaned", "Running")["status"]["runId"]
    batch.delete_namespaced_job("orphaned", namespace, propagation_policy="Background")
    condition = runs.wait_reason("orphaned", "JobDeleted")
    assert "KILLED" in condition["message"]
    assert mlflow_client.get_run(run_id).info.status == "KILLED"
    assert stays(lambda: not jobs_of(batch, namespace), duration=3)


# --------------------------------------------------------------------------- admission


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"experimentRef": {"name": "e"}, "experimentName": "e", "template": template()}, "exactly one of"),
        ({"template": template()}, "exactly one of"),
        ({"experimentName": "e"}, "spec.template: Required value"),
        ({"experimentName": "e", "template": {"spec": {"containers": []}}}, "should have at least 1 items"),
        ({"experimentName": "e", "template": template(), "registerModel": {"name": "m", "aliases": ["latest"]}},
         "reserved alias"),
        ({"experimentName": "e", "template": template(), "registerModel": {"name": "a/b"}}, "registerModel.name"),
        ({"experimentName": "e", "template": template(), "tags": {"mlflow.source": "x"}}, "reserved"),
        ({"experimentName": "e", "template": {"spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}}},
         "Unsupported value"),
    ],
)
def test_invalid_specs_are_rejected_by_the_api_server(runs, body, expected):
    with pytest.raises(ApiException) as raised:
        runs.create("invalid", body)
    assert raised.value.status == 422
    assert expected in json.loads(raised.value.body)["message"]


def test_names_longer_than_63_characters_are_rejected(runs):
    with pytest.raises(ApiException) as raised:
        runs.create("x" * 64, {"experimentName": "e", "template": template()})
    assert "at most 63 characters" in json.loads(raised.value.body)["message"]


def test_the_spec_is_immutable_once_the_run_started(runs, ready_experiment):
    runs.create("frozen", spec())
    wait_phase(runs, "frozen", "Running")
    with pytest.raises(ApiException) as raised:
        runs.patch_spec("frozen", {"params": {"a": "1"}})
    assert "immutable once the run has started" in json.loads(raised.value.body)["message"]


def test_the_spec_can_be_fixed_before_the_run_starts(runs, ready_experiment, experiments):
    runs.create("typo", spec(experimentRef={"name": "exq"}, template=template(hold=False)))
    runs.wait_reason("typo", "ExperimentNotFound")
    runs.patch_spec("typo", {"experimentRef": {"name": "exp"}})
    wait_phase(runs, "typo", "Succeeded")


def test_kubectl_get_shows_phase_run_id_experiment_and_metric(runs, ready_experiment, namespace, sandbox,
                                                              mlflow_client):
    runs.create("cols", spec(primaryMetric="acc"))
    run_id = wait_phase(runs, "cols", "Running")["status"]["runId"]
    assert play(namespace, "cols", TRAINER + ["--metric", "acc=0.875"]) == 0
    wait_phase(runs, "cols", "Succeeded")
    out = sandbox.kubectl("get", "trainingruns", "-n", namespace).stdout.splitlines()
    # NODES: a distributed run's nodes by phase (empty for a single-pod run).
    assert out[0].split() == ["NAME", "PHASE", "RUN", "ID", "EXPERIMENT", "METRIC", "NODES", "AGE"]
    row = out[1].split()
    assert row[:5] == ["cols", "Succeeded", run_id, "exp", "acc=0.875"]


def test_a_job_authenticates_with_the_secret_it_references(runs, namespace, core, sandbox):
    """Against the sandbox's basic-auth server: the operator logs in with the Secret, and the
    training code, given only secretKeyRefs, logs in with the same Secret's values."""
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(labels=CREDENTIALS_LABEL, name="admin-creds"),
        string_data={"username": "admin", "password": sandbox.auth_admin_password}))
    runs.create("authed", {"experimentName": unique("authed"),
                           "tracking": {"uri": sandbox.auth_tracking_uri, "secretRef": {"name": "admin-creds"}},
                           "template": template()})
    run_id = wait_phase(runs, "authed", "Running")["status"]["runId"]
    assert play(namespace, "authed", TRAINER + ["--metric", "acc=0.75"]) == 0
    status = wait_phase(runs, "authed", "Succeeded")["status"]
    assert status["runId"] == run_id and status["metrics"] == {"acc": 0.75}


def test_a_registration_that_failed_is_retried_even_after_the_job_is_gone(runs, ready_experiment, namespace,
                                                                          mlflow_client, batch):
    """ModelNotFound first; then the model appears in the run and the finished Job has been
    removed (as ttlSecondsAfterFinished would): the next check registers it."""
    name = unique("late")
    runs.create("late", spec(registerModel={"name": name}))
    assert play(namespace, "late", TRAINER) == 0
    runs.wait_reason("late", "ModelNotFound")
    run_id = runs.get("late")["status"]["runId"]
    batch.delete_namespaced_job("late", namespace, propagation_policy="Background")
    import mlflow
    import mlflow.pyfunc
    from trainers.log_model import Doubler

    mlflow.set_tracking_uri(mlflow_client.tracking_uri)
    with mlflow.start_run(run_id=run_id):
        mlflow.pyfunc.log_model(name="model", python_model=Doubler())
    mlflow_client.set_terminated(run_id, "FINISHED")
    # Nothing else happens to the object: the operator's timer tries the registration again.
    status = runs.wait_ready("late", timeout=60)["status"]
    assert status["modelVersion"]["name"] == name
    assert mlflow_client.get_run(run_id).info.status == "FINISHED"


def test_an_mlflow_outage_when_the_job_ends_is_retried_until_the_run_is_closed(runs, ready_experiment, namespace,
                                                                               core, sandbox, mlflow_client):
    runs.create("outage", spec())
    run_id = wait_phase(runs, "outage", "Running")["status"]["runId"]
    stopped = sandbox.sandbox("stop", "mlflow")
    assert stopped.returncode == 0, stopped.stderr
    try:
        pod = core.list_namespaced_pod(namespace, label_selector="job-name=outage").items[0]
        core.patch_namespaced_pod(pod.metadata.name, namespace,
                                  {"metadata": {"annotations": {"sandbox.mlflow.operator.dev/finish": "failed"}}})
        runs.wait_reason("outage", "TrackingUnavailable", timeout=60)
    finally:
        restarted = sandbox.sandbox("up")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    status = wait_phase(runs, "outage", "Failed", timeout=60)["status"]
    assert status["runStatus"] == "FAILED"
    assert mlflow_client.get_run(run_id).info.status == "FAILED"
