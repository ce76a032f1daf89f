"""TrainingRuns whose containers truly run: on the sandbox's real node (kubelet, containerd,
runc), in the churn example's image built from examples/churn/Dockerfile. The test's
namespace carries the label that sends its pods there (with the host network, so the
containers reach MLflow on 127.0.0.1)."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from helpers import Objects, wait_for

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "mlflow-operator-examples/churn-train:0.1.0"
REAL_NODE_LABEL = "sandbox.mlflow.operator.dev/real-node"
CREDENTIALS_LABEL = {"mlflow.operator.dev/credentials": "true"}


@pytest.fixture
def real_node_namespace(core, namespace) -> str:
    core.patch_namespace(namespace, {"metadata": {"labels": {REAL_NODE_LABEL: "true"}}})
    return namespace


@pytest.fixture
def runs(custom, real_node_namespace) -> Objects:
    return Objects(custom, real_node_namespace, "trainingruns", "TrainingRun")


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def python(code: str, **container) -> dict:
    """A pod template whose container runs `code` with the image's Python."""
    return {"spec": {"containers": [{"name": "train", "image": IMAGE, "command": ["python", "-c", code],
                                     **container}]}}


def pods_of(core, namespace: str, name: str) -> list:
    return core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items


def test_the_example_trains_in_a_container_on_the_real_node_and_registers_its_model(
    runs, core, real_node_namespace, mlflow_client
):
    model = unique("churn-real")
    runs.create("churn", {
        "experimentName": unique("real-node"), "params": {"n_estimators": "20"}, "primaryMetric": "accuracy",
        "registerModel": {"name": model, "aliases": ["champion"]},
        "template": {"spec": {"containers": [{"name": "train", "image": IMAGE,
                                              "args": ["--n-estimators", "$(MLFLOW_PARAM_N_ESTIMATORS)"]}]}},
    })
    status = runs.wait_ready("churn", timeout=240)["status"]
    assert status["runStatus"] == "FINISHED" and status["metrics"]["accuracy"] > 0.9
    [pod] = pods_of(core, real_node_namespace, "churn")
    assert pod.spec.node_name == "localhost" and pod.spec.host_network
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    run = mlflow_client.get_run(status["runId"])
    assert run.data.params["n_estimators"] == "20"
    assert mlflow_client.get_model_version_by_alias(model, "champion").run_id == status["runId"]


def test_the_run_carries_the_pod_node_and_the_image_digest_the_node_resolved(runs, core, real_node_namespace,
                                                                              mlflow_client):
    runs.create("provenance", {
        "experimentName": unique("real-node"), "description": "digest check",
        "template": {"spec": {"containers": [{"name": "train", "image": IMAGE, "args": ["--n-estimators", "5"]}]}},
    })
    status = runs.wait_ready("provenance", timeout=240)["status"]
    [pod] = pods_of(core, real_node_namespace, "provenance")
    tags = mlflow_client.get_run(status["runId"]).data.tags
    assert tags["k8s.pod"] == pod.metadata.name and tags["k8s.node"] == "localhost"
    assert tags["k8s.image"] == IMAGE
    assert tags["k8s.image.digest"].startswith("sha256:")
    assert tags["k8s.image.digest"] in pod.status.container_statuses[0].image_id
    assert tags["mlflow.note.content"] == "digest check"


def test_kubectl_logs_shows_what_the_training_container_printed(runs, real_node_namespace, sandbox):
    runs.create("talk", {"experimentName": unique("logs"),
                         "template": python("print('hello from a real container')")})
    runs.wait_ready("talk", timeout=120)
    logs = sandbox.kubectl("logs", "-n", real_node_namespace, "job/talk").stdout
    assert "hello from a real container" in logs


def test_a_container_exiting_3_fails_the_run_naming_the_pod_and_exit_code(runs, core, real_node_namespace,
                                                                           mlflow_client):
    runs.create("three", {"experimentName": unique("exit"), "template": python("import sys; sys.exit(3)")})
    condition = runs.wait_reason("three", "BackoffLimitExceeded", timeout=120)
    [pod] = pods_of(core, real_node_namespace, "three")
    assert f"pod {pod.metadata.name} container train exited with code 3" in condition["message"]
    assert mlflow_client.get_run(runs.get("three")["status"]["runId"]).info.status == "FAILED"


def test_an_out_of_memory_kill_is_surfaced(runs, real_node_namespace, mlflow_client):
    hog = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))"
    runs.create("hog", {"experimentName": unique("oom"),
                        "template": python(hog, resources={"limits": {"memory": "96Mi"}})})
    condition = runs.wait_reason("hog", "BackoffLimitExceeded", timeout=120)
    assert "OOMKilled" in condition["message"] and "exited with code 137" in condition["message"]
    assert mlflow_client.get_run(runs.get("hog")["status"]["runId"]).info.status == "FAILED"


def test_active_deadline_seconds_ends_a_run_as_deadline_exceeded(runs, mlflow_client):
    runs.create("slow", {"experimentName": unique("deadline"), "activeDeadlineSeconds": 5,
                         "template": python("import time; time.sleep(300)")})
    runs.wait_reason("slow", "DeadlineExceeded", timeout=120)
    assert mlflow_client.get_run(runs.get("slow")["status"]["runId"]).info.status == "FAILED"


def test_credentials_from_a_secret_reach_a_container_that_logs_to_the_basic_auth_server(
    runs, core, real_node_namespace, sandbox
):
    core.create_namespaced_secret(real_node_namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(name="admin-creds", labels=CREDENTIALS_LABEL),
        string_data={"username": "admin", "password": sandbox.auth_admin_password}))
    code = "import mlflow\nwith mlflow.start_run():\n    mlflow.log_metric('from_container', 1.0)"
    runs.create("authed", {"experimentName": unique("auth"), "template": python(code),
                           "tracking": {"uri": sandbox.auth_tracking_uri, "secretRef": {"name": "admin-creds"}}})
    status = runs.wait_ready("authed", timeout=180)["status"]
    assert status["metrics"] == {"from_container": 1.0}
    job = client.BatchV1Api(core.api_client).read_namespaced_job("authed", real_node_namespace)
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["MLFLOW_TRACKING_PASSWORD"].value is None  # a secretKeyRef, never the value
    assert env["MLFLOW_TRACKING_PASSWORD"].value_from.secret_key_ref.name == "admin-creds"


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_deleting_a_run_mid_training_stops_its_container_and_kills_the_run(runs, core, real_node_namespace,
                                                                            mlflow_client):
    marker = unique("training-marker")
    runs.create("doomed", {"experimentName": unique("kill"),
                           "template": python(f"import time  # {marker}\ntime.sleep(600)")})
    wait_for(lambda: processes_with(marker), timeout=120, message="the training process to run")
    wait_for(lambda: (runs.get("doomed").get("status") or {}).get("phase") == "Running", timeout=60,
             message="the run to be Running")
    run_id = runs.get("doomed")["status"]["runId"]
    runs.delete("doomed")
    wait_for(lambda: not runs.exists("doomed"), timeout=60, message="the TrainingRun to go")
    assert mlflow_client.get_run(run_id).info.status == "KILLED"
    wait_for(lambda: not processes_with(marker), timeout=60, message="the container to be stopped")
    wait_for(lambda: not pods_of(core, real_node_namespace, "doomed"), timeout=60, message="the pod to go")


class MostUnfinished(threading.Thread):
    """Polls a sweep's trials while it runs: the most that were unfinished at one time."""

    def __init__(self, custom, namespace: str, sweep: str) -> None:
        super().__init__(daemon=True)
        self.custom, self.namespace, self.sweep = custom, namespace, sweep
        self.most = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            trials = self.custom.list_namespaced_custom_object(
                "mlflow.operator.dev", "v1alpha1", self.namespace, "trainingruns",
                label_selector=f"mlflow.operator.dev/sweep={self.sweep}")["items"]
            unfinished = [t for t in trials if (t.get("status") or {}).get("phase") not in ("Succeeded", "Failed", "EarlyStopped")]
            self.most = max(self.most, len(unfinished))


def test_the_tpe_sweep_example_trains_12_trials_3_at_a_time_in_containers_and_registers_the_best(
    custom, real_node_namespace, sandbox, mlflow_client
):
    example = yaml.safe_load((ROOT / "examples" / "04-trainingsweep.yaml").read_text())
    model = unique("churn-tuned")
    example["metadata"]["namespace"] = real_node_namespace
    spec = example["spec"]
    del spec["experimentRef"]
    spec["experimentName"] = unique("sweep-example")
    spec["registerBest"]["name"] = model
    monitor = MostUnfinished(custom, real_node_namespace, "churn-search")
    monitor.start()
    try:
        custom.create_namespaced_custom_object("mlflow.operator.dev", "v1alpha1", real_node_namespace,
                                               "trainingsweeps", example)
        waited = sandbox.kubectl("wait", "trainingsweep/churn-search", "-n", real_node_namespace,
                                 "--for=condition=Ready", "--timeout=900s", check=False, timeout=960)
    finally:
        monitor.stop.set()
    sweep = custom.get_namespaced_custom_object("mlflow.operator.dev", "v1alpha1", real_node_namespace,
                                                "trainingsweeps", "churn-search")
    assert waited.returncode == 0, (waited.stderr, sweep.get("status"))
    status = sweep["status"]
    trials = status["trials"]
    # Median stopping may stop some (counted apart); every other trial trained to the end.
    assert trials["succeeded"] + trials["earlyStopped"] == 12 and trials["failed"] == 0 and monitor.most <= 3
    children = mlflow_client.search_runs([status["experimentId"]],
                                         f"tags.`mlflow.parentRunId` = '{status['parentRunId']}'")
    assert len(children) == 12
    finished = [run for run in children if run.info.status == "FINISHED"]
    assert len(finished) == trials["succeeded"]
    best = max(finished, key=lambda run: run.data.metrics["accuracy"])
    assert status["bestTrial"]["value"] == best.data.metrics["accuracy"]
    assert mlflow_client.get_run(status["bestTrial"]["runId"]).data.metrics["accuracy"] == best.data.metrics["accuracy"]
    assert mlflow_client.get_model_version_by_alias(model, "tuned").run_id == status["bestTrial"]["runId"]
    assert status["modelVersion"]["uri"].startswith(f"models:/{model}/")
