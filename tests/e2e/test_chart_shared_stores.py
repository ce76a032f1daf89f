"""The chart's embedded server on shared stores, installed for real in the sandbox: its data in
the sandbox's PostgreSQL server, its artifacts in the sandbox's S3-compatible store (versitygw),
2 workers, the schema migrated by the hook Job, /metrics on. The example
TrainingRun and sweep train in containers on the real node against it.

One replica: the sandbox's pods share the host network, where a second server cannot bind the
port (README "Not done yet"). The tests share one install and run in file order.
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

from chart_target import SandboxTarget, cluster_mode
from helpers import Objects, wait_for

pytestmark = pytest.mark.skipif(cluster_mode(), reason="the sandbox's PostgreSQL and S3 store")
NAME = f"chart-{uuid.uuid4().hex[:8]}"
EXTRA = ("mlflow.metrics.enabled=true",)


class SharedStoresTarget(SandboxTarget):
    def install(self, *set_values: str) -> None:
        args = [arg for value in (*EXTRA, *set_values) for arg in ("--set", value)]
        result = self.sandbox.sandbox("chart", "--shared-stores", NAME, *args)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def chart(sandbox) -> Iterator[SharedStoresTarget]:
    target = SharedStoresTarget(sandbox)
    target.install()
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
    [server] = running_pods(core, chart, mlflow_pods(chart))
    assert job.status.completion_time <= server.metadata.creation_timestamp
    assert sql(sandbox, "SELECT count(*) FROM alembic_version") == "1"
    # No secret value in any pod spec: the URI and the keys are Secret references.
    spec = str(server.spec.to_dict()) + str(job.spec.to_dict())
    assert "postgresql://" not in spec
    assert (sandbox.state / "s3" / "secret-key").read_text().strip() not in spec


def test_the_server_runs_two_worker_processes(chart, core):
    [server] = running_pods(core, chart, mlflow_pods(chart))
    assert "--workers=2" in server.spec.containers[0].args
    commands = in_pod(chart, server, "python3", "-c",
                      "import pathlib; print('\\n'.join(p.read_text().replace('\\0', ' ') "
                      "for p in pathlib.Path('/proc').glob('[0-9]*/cmdline')))")
    assert commands.count("multiprocessing") >= 2, commands


def test_the_example_run_keeps_its_data_in_postgres_and_its_artifacts_in_the_bucket(chart, core, custom, sandbox,
                                                                                   chart_namespace):  # noqa: F811
    model_name = f"churn-{uuid.uuid4().hex[:8]}"
    experiment, run, model = (example(name, chart_namespace) for name in (
        "01-experiment.yaml", "02-trainingrun.yaml", "03-registeredmodel.yaml"))
    run["spec"]["registerModel"]["name"] = model["spec"]["name"] = model_name
    for body in (experiment, run, model):
        create(custom, body)
    runs = Objects(custom, chart_namespace, "trainingruns", "TrainingRun")
    status = runs.wait_ready("churn-rf-1", timeout=300)["status"]
    assert status["runStatus"] == "FINISHED"
    Objects(custom, chart_namespace, "registeredmodels", "RegisteredModel").wait_ready("churn-model", timeout=120)

    with embedded_mlflow(chart, chart_namespace) as mlflow:
        assert mlflow.get_model_version_by_alias(model_name, "champion").version == "1"
        assert mlflow.get_run(status["runId"]).data.metrics["accuracy"] > 0.9
    assert sql(sandbox, f"SELECT status FROM runs WHERE run_uuid = '{status['runId']}'") == "FINISHED"
    assert sql(sandbox, f"SELECT count(*) FROM model_versions WHERE name = '{model_name}'") == "1"
    keys = bucket_keys(sandbox)
    assert any(key.startswith("artifacts/") and key.endswith("/MLmodel") for key in keys), keys


def test_the_example_sweep_trains_its_trials_against_the_shared_stores(chart, custom, chart_namespace):  # noqa: F811
    sweep = example("04-trainingsweep.yaml", chart_namespace)
    create(custom, example("01-experiment.yaml", chart_namespace))
    sweep["spec"]["maxTrials"] = 4
    sweep["spec"]["parallelism"] = 2
    sweep["spec"].pop("earlyStopping", None)
    sweep["spec"]["registerBest"]["name"] = f"churn-tuned-{uuid.uuid4().hex[:8]}"
    create(custom, sweep)
    sweeps = Objects(custom, chart_namespace, "trainingsweeps", "TrainingSweep")
    status = sweeps.wait_ready(sweep["metadata"]["name"], timeout=600)["status"]
    assert status["phase"] == "Succeeded"
    assert status["trials"]["succeeded"] == 4
    with embedded_mlflow(chart, chart_namespace) as mlflow:
        children = mlflow.search_runs([status["experimentId"]],
                                      filter_string=f"tags.`mlflow.parentRunId` = '{status['parentRunId']}'")
        version = mlflow.get_model_version_by_alias(sweep["spec"]["registerBest"]["name"], "tuned")
    assert len(children) == 4 and all(child.info.status == "FINISHED" for child in children)
    assert version.run_id == status["bestTrial"]["runId"]


def test_the_server_serves_prometheus_metrics(chart):
    body = wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{chart.mlflow_port}/metrics",
                                                   timeout=5).read().decode(), timeout=60, message="/metrics")
    assert "mlflow_http_request_total" in body or "flask_http_request_total" in body, body[:2000]


def test_helm_upgrade_to_another_mlflow_image_migrates_once_and_keeps_every_object(chart, core, custom, batch,
                                                                                   sandbox, chart_namespace):  # noqa: F811
    """The image's reference changes (the same build under a new tag), as a version bump does."""
    experiments = Objects(custom, chart_namespace, "experiments", "Experiment")
    experiments.create("kept", {"description": "before the upgrade"})
    experiment_id = experiments.wait_ready("kept", timeout=60)["status"]["experimentId"]
    old_job = batch.read_namespaced_job(f"{chart.fullname}-mlflow-migrate", chart.namespace)
    [old_server] = running_pods(core, chart, mlflow_pods(chart))
    image = old_server.spec.containers[0].image
    repository, tag = image.rsplit(":", 1)
    subprocess.run(["ctr", f"--address={sandbox.state / 'node' / 'containerd.sock'}", "--namespace=k8s.io",
                    "images", "tag", "--force", image, f"{repository}:{tag}-upgrade"], check=True, capture_output=True)

    # What a client sees during the upgrade: requests made, requests failed (after the client's
    # retries). One replica on the sandbox's host network is replaced, not rolled.
    attempted, failed = [0], [0]
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            attempted[0] += 1
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{chart.mlflow_port}/health", timeout=5).read()
            except OSError:
                failed[0] += 1
            time.sleep(0.2)

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    chart.install(f"mlflow.image.tag={tag}-upgrade")
    stop.set()
    prober.join()
    print(f"during the upgrade: {attempted[0]} requests, {failed[0]} failed (Recreate: one replica)")

    new_job = batch.read_namespaced_job(f"{chart.fullname}-mlflow-migrate", chart.namespace)
    assert new_job.metadata.uid != old_job.metadata.uid
    assert new_job.status.succeeded == 1 and not new_job.status.failed
    [migrate_pod] = migration_pods(chart, core)
    assert migrate_pod.spec.containers[0].image == f"{repository}:{tag}-upgrade"
    [new_server] = wait_for(lambda: [p for p in running_pods(core, chart, mlflow_pods(chart))
                                     if ready(p) and p.metadata.name != old_server.metadata.name], timeout=120,
                            message="the upgraded server")
    assert new_server.spec.containers[0].image == f"{repository}:{tag}-upgrade"
    assert is_ready(experiments, "kept")
    experiments.patch_spec("kept", {"description": "after the upgrade"})
    wait_for(lambda: experiments.get("kept")["status"].get("observedGeneration") == 2 and is_ready(experiments, "kept"),
             timeout=60, message="the change to reach the upgraded server")
    with embedded_mlflow(chart, chart_namespace) as mlflow:
        assert mlflow.get_experiment(experiment_id).tags["mlflow.note.content"] == "after the upgrade"

