"""Distributed TrainingRuns: one MLflow run on several pods (an Indexed Job and its headless
Service). On the real node the ranks' containers truly run and exchange gradients (the
example's train_distributed.py); on kwok the Job, Service and env are checked as built, and
a sweep runs its trials as distributed Jobs."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from test_trainingrun import template
from test_trainingsweep import Trainer, sweep_spec

from helpers import Objects, events_for, wait_for

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "mlflow-operator-examples/churn-train:0.1.0"
REAL_NODE_LABEL = "sandbox.mlflow.operator.dev/real-node"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def real_node_runs(core, custom, namespace) -> Objects:
    core.patch_namespace(namespace, {"metadata": {"labels": {REAL_NODE_LABEL: "true"}}})
    return Objects(custom, namespace, "trainingruns", "TrainingRun")


def rank_pods(core, namespace: str, name: str) -> list:
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    return sorted(pods, key=lambda p: int(p.metadata.annotations[INDEX_ANNOTATION]))


def python_ranks(code: str) -> dict:
    return {"spec": {"containers": [{"name": "train", "image": IMAGE, "command": ["python", "-c", code],
                                     "resources": {"requests": {"cpu": "100m"}}}]}}


# --------------------------------------------------------------------------- real node


def test_the_example_trains_on_two_nodes_into_one_run_with_every_ranks_data_and_system_metrics(
    real_node_runs, core, namespace, mlflow_client
):
    example = yaml.safe_load((ROOT / "examples" / "05-distributed-trainingrun.yaml").read_text())
    model = unique("churn-ddp")
    spec = {**example["spec"], "experimentName": unique("ddp"), "registerModel": {"name": model, "aliases": ["champion"]}}
    del spec["experimentRef"]
    real_node_runs.create("ddp", spec)
    status = real_node_runs.wait_ready("ddp", timeout=300)["status"]
    assert status["runStatus"] == "FINISHED"
    assert status["nodes"]["succeeded"] == 2 and status["nodes"]["summary"] == "2 nodes: 2 succeeded"
    pods = rank_pods(core, namespace, "ddp")
    assert [p.metadata.annotations[INDEX_ANNOTATION] for p in pods] == ["0", "1"]
    assert all(p.status.container_statuses[0].state.terminated.exit_code == 0 for p in pods)
    metrics = mlflow_client.get_run(status["runId"]).data.metrics
    # Both ranks' shards went into every step: rank 0 logged what each rank held.
    assert metrics["ranks_contributed"] == 2 and metrics["world_size"] == 2
    assert metrics["rows_rank_0"] > 0 and metrics["rows_rank_1"] > 0
    assert metrics["rows_rank_0"] + metrics["rows_rank_1"] == metrics["rows_total"]
    assert metrics["accuracy"] > 0.9
    # Every node's system metrics, in the one run.
    assert any(key.startswith("system/node-0/") for key in metrics)
    assert any(key.startswith("system/node-1/") for key in metrics)
    # The model rank 0 logged is registered as usual.
    assert mlflow_client.get_model_version_by_alias(model, "champion").run_id == status["runId"]
    assert status["modelVersion"]["name"] == model


def test_a_rank_that_exits_3_fails_the_run_naming_that_rank(real_node_runs, core, namespace, mlflow_client):
    code = "import os, sys, time\nif os.environ['RANK'] == '1':\n    sys.exit(3)\ntime.sleep(300)"
    real_node_runs.create("broken", {"experimentName": unique("ddp-fail"), "distributed": {"nodes": 2},
                                     "template": python_ranks(code)})
    condition = real_node_runs.wait_reason("broken", "MaxFailedIndexesExceeded", timeout=180)
    failed = next(p for p in rank_pods(core, namespace, "broken") if p.metadata.annotations[INDEX_ANNOTATION] == "1")
    assert f"rank 1: pod {failed.metadata.name} container train exited with code 3" in condition["message"]
    status = real_node_runs.get("broken")["status"]
    assert status["phase"] == "Failed" and status["nodes"]["failed"] == 1
    assert mlflow_client.get_run(status["runId"]).info.status == "FAILED"
    # The Job controller stopped rank 0, which would otherwise sleep for five minutes.
    wait_for(lambda: all(p.status.phase in ("Failed", "Succeeded") or p.metadata.deletion_timestamp
                         for p in rank_pods(core, namespace, "broken")), timeout=60, message="rank 0 stopped")


def test_deleting_a_distributed_run_mid_run_stops_every_rank_and_kills_the_run(
    real_node_runs, core, namespace, mlflow_client
):
    real_node_runs.create("stopped", {"experimentName": unique("ddp-kill"), "distributed": {"nodes": 2},
                                      "template": python_ranks("import time; time.sleep(600)")})
    wait_for(lambda: (real_node_runs.get("stopped").get("status") or {}).get("nodes", {}).get("running") == 2,
             timeout=120, message="both ranks running")
    run_id = real_node_runs.get("stopped")["status"]["runId"]
    real_node_runs.delete("stopped")
    wait_for(lambda: not rank_pods(core, namespace, "stopped"), timeout=90, message="both rank pods gone")
    assert mlflow_client.get_run(run_id).info.status == "KILLED"


# --------------------------------------------------------------------------- kwok


def test_a_four_node_run_is_an_indexed_job_in_a_headless_service_with_each_ranks_env(
    runs, core, batch, namespace, sandbox
):
    runs.create("four", {"experimentName": unique("ddp-kwok"), "distributed": {"nodes": 4, "port": 23456},
                         "template": template(hold=False)})
    status = runs.wait_ready("four", timeout=90)["status"]
    assert status["nodes"] == {"total": 4, "pending": 0, "running": 0, "succeeded": 4, "failed": 0,
                               "summary": "4 nodes: 4 succeeded"}
    job = batch.read_namespaced_job("four", namespace)
    assert (job.spec.completion_mode, job.spec.completions, job.spec.parallelism) == ("Indexed", 4, 4)
    assert job.spec.backoff_limit_per_index == 0 and job.spec.max_failed_indexes == 0
    pod_spec = job.spec.template.spec
    assert pod_spec.subdomain == "four"
    env = {e.name: e for e in pod_spec.containers[0].env}
    assert env["MASTER_ADDR"].value == env["PET_MASTER_ADDR"].value == "four-0.four"
    assert env["MASTER_PORT"].value == env["PET_MASTER_PORT"].value == "23456"
    assert env["WORLD_SIZE"].value == "4" and env["PET_NNODES"].value == "4" and env["PET_NPROC_PER_NODE"].value == "1"
    for name in ("NODE_RANK", "RANK", "PET_NODE_RANK"):
        assert env[name].value_from.field_ref.field_path == f"metadata.annotations['{INDEX_ANNOTATION}']"
    assert env["MLFLOW_SYSTEM_METRICS_NODE_ID"].value == "node-$(NODE_RANK)"
    assert env["MLFLOW_RUN_ID"].value == status["runId"]
    service = core.read_namespaced_service("four", namespace)
    assert service.spec.cluster_ip == "None" and service.spec.publish_not_ready_addresses is True
    assert service.spec.ports[0].port == 23456
    assert service.spec.selector == {"mlflow.operator.dev/training-run": "four", "batch.kubernetes.io/job-name": "four"}
    owner = service.metadata.owner_references[0]
    assert owner.kind == "TrainingRun" and owner.uid == runs.get("four")["metadata"]["uid"] and owner.controller
    # Every rank's pod is <name>-<rank> in the Service's subdomain, as the Job controller names them.
    pods = rank_pods(core, namespace, "four")
    assert [p.spec.hostname for p in pods] == ["four-0", "four-1", "four-2", "four-3"]
    assert {p.spec.subdomain for p in pods} == {"four"}
    # kubectl get shows the nodes by phase; the start Event says what was made.
    out = sandbox.kubectl("get", "trainingruns", "four", "-n", namespace).stdout.splitlines()
    assert "NODES" in out[0] and "4 nodes: 4 succeeded" in out[1]
    assert any("4 nodes, in headless Service four" in e.message for e in events_for(core, namespace, "four"))


def test_a_template_that_sets_a_ranks_env_itself_is_refused_at_admission(runs):
    body = template(hold=False)
    body["spec"]["containers"][0]["env"] = [{"name": "MASTER_PORT", "value": "1"}]
    with pytest.raises(client.exceptions.ApiException) as refused:
        runs.create("conflict", {"experimentName": "x", "distributed": {"nodes": 2}, "template": body})
    assert refused.value.status == 422 and "MASTER_PORT" in refused.value.body
    with pytest.raises(client.exceptions.ApiException) as refused:
        runs.create("zero", {"experimentName": "x", "distributed": {"nodes": 0}, "template": template()})
    assert "nodes" in refused.value.body


def test_a_suspended_job_is_pending_and_runs_once_resumed(runs, batch, namespace):
    runs.create("held", {"experimentName": unique("ddp-queue"), "distributed": {"nodes": 2}, "suspend": True,
                         "template": template(hold=False)})
    condition = runs.wait_reason("held", "JobSuspended", timeout=60)
    assert condition["status"] == "False" and "kueue.x-k8s.io/queue-name" in condition["message"]
    assert runs.get("held")["status"]["phase"] == "Pending"
    batch.patch_namespaced_job("held", namespace, {"spec": {"suspend": False}})  # as Kueue admits it
    assert runs.wait_ready("held", timeout=90)["status"]["nodes"]["succeeded"] == 2


def test_queue_labels_of_the_training_run_are_set_on_its_job(runs, batch, namespace, custom):
    body = {"apiVersion": "mlflow.operator.dev/v1alpha1", "kind": "TrainingRun",
            "metadata": {"name": "queued", "labels": {"kueue.x-k8s.io/queue-name": "team-a", "team": "a"}},
            "spec": {"experimentName": unique("ddp-labels"), "distributed": {"nodes": 2}, "suspend": True,
                     "template": template(hold=False)}}
    custom.create_namespaced_custom_object("mlflow.operator.dev", "v1alpha1", namespace, "trainingruns", body)
    job = wait_for(lambda: next(iter(batch.list_namespaced_job(namespace).items), None), timeout=60)
    assert job.metadata.labels["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "team" not in job.metadata.labels


def test_a_sweep_with_a_distributed_template_runs_each_trial_as_a_distributed_job(
    sweeps, runs, core, batch, mlflow_client
):
    parameters = {"n_estimators": {"values": ["10", "50"]}, "max_depth": {"values": ["8"]}}
    sweeps.create("dsweep", sweep_spec("sweep-ddp", parameters=parameters, parallelism=2, distributed={"nodes": 2}))
    trainer = Trainer(core, runs, mlflow_client, "dsweep")
    status = trainer.train_until(sweeps, "Succeeded")["status"]
    # Each rank's pod was played (every rank of both trials).
    assert len(trainer.trained) == 4
    assert status["bestTrial"]["params"] == {"max_depth": "8", "n_estimators": "50"}
    for trial in ("dsweep-0", "dsweep-1"):
        assert runs.get(trial)["spec"]["distributed"]["nodes"] == 2
        job = batch.read_namespaced_job(trial, runs.namespace)
        assert (job.spec.completion_mode, job.spec.completions) == ("Indexed", 2)
        assert runs.get(trial)["status"]["nodes"]["succeeded"] == 2
