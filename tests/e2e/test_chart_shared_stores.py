"""The chart's embedded server on shared stores, installed for real in the sandbox: its data in
the sandbox's PostgreSQL server, its artifacts in the sandbox's S3-compatible store (versitygw),
2 replicas of 2 workers, the schema migrated by the hook Job, /metrics on. The example
TrainingRun and sweep train in containers on the real node against it.

The replicas share the real node's host network: the sandbox's admission policy
`sandbox-shared-port` has them bind the port with SO_REUSEPORT, and the kernel spreads
connections over them as a Service would. The tests share one install and run in file order.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import urllib.request
import uuid
from typing import Iterator

import pytest
from test_chart_install import (  # noqa: F401
    apply_examples,
    chart_namespace,
    create,
    embedded_mlflow,
    example,
    in_pod,
    is_ready,
    mlflow_pods,
    ready,
    running_pods,
)

from chart_target import TRAINING_IMAGE, SandboxTarget, cluster_mode
from helpers import Objects, wait_for

pytestmark = pytest.mark.skipif(cluster_mode(), reason="the sandbox's PostgreSQL and S3 store")
NAME = f"chart-{uuid.uuid4().hex[:8]}"
EXTRA = ("mlflow.metrics.enabled=true",)


class SharedStoresTarget(SandboxTarget):
    def install(self, *set_values: str) -> None:
        args = [arg for value in (*EXTRA, *set_values) for arg in ("--set", value)]
        result = self.sandbox.sandbox("chart", "--shared-stores", NAME, *args)
        assert result.returncode == 0, result.stdout + result.stderr


def only_current_servers(chart, core, replicas: int = 2) -> bool:
    """Exactly the current servers, Ready: helm's --wait returns when the new ones are Ready,
    while servers of an earlier install (another database) may still be stopping."""
    pods = core.list_namespaced_pod(chart.namespace, label_selector=mlflow_pods(chart)).items
    return len(pods) == replicas and all(
        p.status.phase == "Running" and ready(p) and not p.metadata.deletion_timestamp for p in pods)


@pytest.fixture(scope="module")
def chart(sandbox, core) -> Iterator[SharedStoresTarget]:
    target = SharedStoresTarget(sandbox)
    target.install()
    wait_for(lambda: only_current_servers(target, core), timeout=180, message="only the installed servers")
    yield target
    target.helm("uninstall", target.release, "--namespace", target.namespace, "--ignore-not-found", "--wait")
    target.kubectl("delete", "jobs,serviceaccounts,roles,rolebindings", "-n", target.namespace, "-l", target.instance,
                   "--ignore-not-found", "--wait=false")
    target.kubectl("delete", "clusterroles,clusterrolebindings", "-l", target.instance, "--ignore-not-found")
    target.after_module()


def sql(sandbox, statement: str) -> str:
    """A query of the chart's database, as the sandbox's PostgreSQL superuser."""
    postgres = sorted((p for p in os.listdir("/usr/lib/postgresql") if p.isdigit()), key=int)[-1]
    result = subprocess.run(
        [f"/usr/lib/postgresql/{postgres}/bin/psql", "-h", "127.0.0.1", "-p", str(sandbox.ports["postgres"]),
         "-U", "postgres", "-d", NAME.replace("-", "_"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"],
        input=statement, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PGPASSWORD": (sandbox.state / "postgres" / "superuser-password").read_text().strip()})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def bucket_keys(sandbox) -> list[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sandbox.ports['s3']}", region_name="us-east-1",
                          aws_access_key_id="sandbox",
                          aws_secret_access_key=(sandbox.state / "s3" / "secret-key").read_text().strip())
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=NAME)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def migration_pods(chart, core) -> list:
    return core.list_namespaced_pod(chart.namespace, label_selector=f"job-name={chart.fullname}-mlflow-migrate").items


def test_the_hook_job_migrated_the_database_once_before_the_server_started(chart, core, batch, sandbox):
    job = batch.read_namespaced_job(f"{chart.fullname}-mlflow-migrate", chart.namespace)
    assert job.status.succeeded == 1 and not job.status.failed
    assert len(migration_pods(chart, core)) == 1
    servers = running_pods(core, chart, mlflow_pods(chart))
    assert servers and all(job.status.completion_time <= s.metadata.creation_timestamp for s in servers)
    assert sql(sandbox, "SELECT count(*) FROM alembic_version") == "1"
    # No secret value in any pod spec: the URI and the keys are Secret references.
    spec = str(servers[0].spec.to_dict()) + str(job.spec.to_dict())
    assert "postgresql://" not in spec
    assert (sandbox.state / "s3" / "secret-key").read_text().strip() not in spec


def test_two_replicas_each_run_two_worker_processes(chart, core):
    servers = running_pods(core, chart, mlflow_pods(chart))
    assert len(servers) == 2 and all(ready(server) for server in servers)
    for server in servers:
        assert "--workers=2" in server.spec.containers[0].args
        commands = in_pod(chart, server, "python3", "-c",
                          "import os; print([open(f'/proc/{p}/cmdline').read() for p in os.listdir('/proc') "
                          "if p.isdigit()])")
        assert commands.count("multiprocessing.spawn") == 2, commands


def test_the_example_run_keeps_its_data_in_postgres_and_its_artifacts_in_the_bucket(chart, core, custom, sandbox,
                                                                                   chart_namespace):  # noqa: F811
    model_name, status = apply_examples(custom, chart_namespace)
    assert status["runStatus"] == "FINISHED"

    with embedded_mlflow(chart, chart_namespace) as mlflow:
        assert mlflow.get_model_version_by_alias(model_name, "champion").version == "1"
        assert mlflow.get_run(status["runId"]).data.metrics["accuracy"] > 0.9
    assert sql(sandbox, f"SELECT status FROM runs WHERE run_uuid = '{status['runId']}'") == "FINISHED"
    assert sql(sandbox, f"SELECT count(*) FROM model_versions WHERE name = '{model_name}'") == "1"
    keys = bucket_keys(sandbox)
    assert any(key.startswith("artifacts/") and key.endswith("/MLmodel") for key in keys), keys


def test_the_example_sweep_loses_no_run_when_a_replica_is_deleted_mid_sweep(chart, core, custom,
                                                                            chart_namespace):  # noqa: F811
    sweep = example("04-trainingsweep.yaml", chart_namespace)
    create(custom, example("01-experiment.yaml", chart_namespace))
    sweep["spec"]["maxTrials"] = 4
    sweep["spec"]["parallelism"] = 2
    sweep["spec"].pop("earlyStopping", None)
    sweep["spec"]["registerBest"]["name"] = f"churn-tuned-{uuid.uuid4().hex[:8]}"
    create(custom, sweep)
    name = sweep["metadata"]["name"]
    sweeps = Objects(custom, chart_namespace, "trainingsweeps", "TrainingSweep")
    wait_for(lambda: (sweeps.get(name).get("status", {}).get("trials") or {}).get("running", 0) >= 1, timeout=180,
             message="a trial training")
    victim = running_pods(core, chart, mlflow_pods(chart))[0]
    core.delete_namespaced_pod(victim.metadata.name, chart.namespace)

    status = sweeps.wait_ready(name, timeout=600)["status"]
    assert status["phase"] == "Succeeded"
    assert status["trials"]["succeeded"] == 4
    with embedded_mlflow(chart, chart_namespace) as mlflow:
        children = mlflow.search_runs([status["experimentId"]],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{status['parentRunId']}'")
        version = mlflow.get_model_version_by_alias(sweep["spec"]["registerBest"]["name"], "tuned")
    assert len(children) == 4 and all(child.info.status == "FINISHED" for child in children)
    assert version.run_id == status["bestTrial"]["runId"]
    wait_for(lambda: only_current_servers(chart, core), timeout=180, message="the replica replaced")


def test_the_servers_serve_prometheus_metrics(chart, sandbox):
    """Each replica counts its own requests (a scrape per pod, as the ServiceMonitor does)."""
    base = f"http://127.0.0.1:{chart.mlflow_port}"

    def counted() -> str | None:
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", headers={
            "Authorization": f"Bearer {sandbox.user_token}", "X-MLflow-Workspace": "default"})
        urllib.request.urlopen(request, timeout=5).read()
        body = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        return body if "mlflow_http_request_total" in body else None

    body = wait_for(counted, timeout=60, message="request counts in /metrics")
    assert "mlflow_exporter_info" in body


def operator_unavailable_calls(chart) -> tuple[int, int]:
    """The chart operator's MLflow calls so far: all of them, and those that found the server
    unavailable (after its client's retries)."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{chart.metrics_port()}/metrics", timeout=5).read().decode()
    total = unavailable = 0
    for line in body.splitlines():
        if line.startswith("mlflow_operator_mlflow_request_duration_seconds_count{"):
            count = int(float(line.rsplit(" ", 1)[1]))
            total += count
            unavailable += count if 'outcome="TrackingUnavailable"' in line else 0
    return total, unavailable


def test_helm_upgrade_to_another_mlflow_image_migrates_once_and_rolls_without_a_failed_request(
        chart, core, custom, batch, sandbox, chart_namespace):  # noqa: F811
    """The image's reference changes (the same build under a new tag), as a version bump does.
    Meanwhile a training pod logs a metric every half second, the test process reads MLflow in
    a loop, and the operator reconciles: what each attempted and what failed is measured."""
    experiments = Objects(custom, chart_namespace, "experiments", "Experiment")
    runs = Objects(custom, chart_namespace, "trainingruns", "TrainingRun")
    experiments.create("kept", {"description": "before the upgrade"})
    experiment_id = experiments.wait_ready("kept", timeout=60)["status"]["experimentId"]
    steps = 160
    runs.create("ticks", {"experimentRef": {"name": "kept"}, "template": {"spec": {"containers": [{
        "name": "train", "image": TRAINING_IMAGE, "command": ["python", "-c", (
            "import time, mlflow\n"
            f"for step in range({steps}):\n"
            "    mlflow.log_metric('tick', step, step=step)\n"
            "    time.sleep(0.5)\n")]}]}}})
    wait_for(lambda: runs.get("ticks").get("status", {}).get("phase") == "Running", timeout=120,
             message="the ticking run")
    old_job = batch.read_namespaced_job(f"{chart.fullname}-mlflow-migrate", chart.namespace)
    old_servers = {p.metadata.name for p in running_pods(core, chart, mlflow_pods(chart))}
    image = running_pods(core, chart, mlflow_pods(chart))[0].spec.containers[0].image
    repository, tag = image.rsplit(":", 1)
    subprocess.run(["ctr", f"--address={sandbox.state / 'node' / 'containerd.sock'}", "--namespace=k8s.io",
                    "images", "tag", "--force", image, f"{repository}:{tag}-upgrade"], check=True, capture_output=True)

    client = {"attempted": 0, "failed": 0}
    health = {"attempted": 0, "failed": 0}
    stop = threading.Event()

    def read_mlflow() -> None:
        with embedded_mlflow(chart, chart_namespace) as mlflow:
            while not stop.is_set():
                client["attempted"] += 1
                try:
                    mlflow.get_experiment(experiment_id)
                except Exception:  # noqa: BLE001 - counted: a request that failed after retries
                    client["failed"] += 1
                try:
                    health["attempted"] += 1
                    urllib.request.urlopen(f"http://127.0.0.1:{chart.mlflow_port}/health", timeout=5).read()
                except OSError:
                    health["failed"] += 1
                time.sleep(0.2)

    reader = threading.Thread(target=read_mlflow, daemon=True)
    operator_before = operator_unavailable_calls(chart)
    reader.start()
    started = time.monotonic()
    chart.install(f"mlflow.image.tag={tag}-upgrade")
    wait_for(lambda: only_current_servers(chart, core) and {
        p.metadata.name for p in running_pods(core, chart, mlflow_pods(chart))}.isdisjoint(old_servers),
        timeout=180, message="both replicas replaced")
    rolled = time.monotonic() - started
    stop.set()
    reader.join()
    operator_after = operator_unavailable_calls(chart)
    run = runs.wait_ready("ticks", timeout=300)
    operator_calls = operator_after[0] - operator_before[0]
    operator_failed = operator_after[1] - operator_before[1]
    print(f"rolling upgrade of 2 replicas in {rolled:.0f}s: MLflow client {client['attempted']} requests, "
          f"{client['failed']} failed; raw /health (no retries) {health['attempted']}, {health['failed']} failed; "
          f"operator {operator_calls} MLflow calls, {operator_failed} unavailable; training pod "
          f"{steps} metrics, run {run['status']['phase']}")

    new_job = batch.read_namespaced_job(f"{chart.fullname}-mlflow-migrate", chart.namespace)
    assert new_job.metadata.uid != old_job.metadata.uid
    assert new_job.status.succeeded == 1 and not new_job.status.failed
    [migrate_pod] = migration_pods(chart, core)
    assert migrate_pod.spec.containers[0].image == f"{repository}:{tag}-upgrade"
    assert all(p.spec.containers[0].image == f"{repository}:{tag}-upgrade"
               for p in running_pods(core, chart, mlflow_pods(chart)))
    assert client["failed"] == 0 and operator_failed == 0
    assert run["status"]["phase"] == "Succeeded" and run["status"]["runStatus"] == "FINISHED"
    with embedded_mlflow(chart, chart_namespace) as mlflow:
        history = mlflow.get_metric_history(run["status"]["runId"], "tick")
        assert sorted(m.step for m in history) == list(range(steps))
    assert is_ready(experiments, "kept")
    experiments.patch_spec("kept", {"description": "after the upgrade"})
    wait_for(lambda: experiments.get("kept")["status"].get("observedGeneration") == 2 and is_ready(experiments, "kept"),
             timeout=60, message="the change to reach the upgraded servers")
