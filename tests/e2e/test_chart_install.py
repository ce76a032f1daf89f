"""The Helm chart installed for real: `sandbox.py chart` (what `make sandbox-helm` runs) puts
the chart's operator and embedded MLflow server on the real node, with the locally built
images, and stops the sandbox's own operator process. The tests share one install and run in
file order; the last one uninstalls, and the module's teardown brings the local operator back.
"""

from __future__ import annotations

import re
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from helpers import GROUP, VERSION, Objects, wait_for

ROOT = Path(__file__).resolve().parents[2]
RELEASE, RELEASE_NAMESPACE = "sandbox", "mlflow-system"
FULLNAME = "sandbox-mlflow-operator"
INSTANCE = f"app.kubernetes.io/instance={RELEASE}"
OPERATOR_PODS = f"{INSTANCE},app.kubernetes.io/component=operator"
MLFLOW_PODS = f"{INSTANCE},app.kubernetes.io/component=mlflow"
REAL_NODE_LABEL = "sandbox.mlflow.operator.dev/real-node"
OPERATOR_FINALIZER = "mlflow.operator.dev/finalizer"
JOB_FINALIZER = "mlflow.operator.dev/job-outcome"


@pytest.fixture(scope="module")
def chart(sandbox):
    installed = sandbox.sandbox("chart")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    yield sandbox
    helm(sandbox, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--ignore-not-found", "--wait")
    # A failed uninstall hook leaves its Job and RBAC behind for inspection: not for the next test.
    sandbox.kubectl("delete", "jobs,serviceaccounts,roles,rolebindings", "-n", RELEASE_NAMESPACE, "-l", INSTANCE,
                    "--ignore-not-found", "--wait=false")
    sandbox.kubectl("delete", "clusterroles,clusterrolebindings", "-l", INSTANCE, "--ignore-not-found")
    started = sandbox.sandbox("up")
    assert started.returncode == 0, started.stdout + started.stderr


def helm(sandbox, *args: str) -> str:
    import os
    import subprocess

    homes = {f"HELM_{kind.upper()}_HOME": str(sandbox.state / "helm" / kind) for kind in ("cache", "config", "data")}
    result = subprocess.run([str(sandbox.bin / "helm"), f"--kubeconfig={sandbox.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=600, env={**os.environ, **homes})
    assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture
def chart_namespace(core, namespace) -> str:
    """A test namespace whose training pods run on the real node."""
    core.patch_namespace(namespace, {"metadata": {"labels": {REAL_NODE_LABEL: "true"}}})
    return namespace


def chart_tracking_uri(sandbox) -> str:
    return f"http://127.0.0.1:{sandbox.ports['chart-mlflow']}"


def running_pods(core, selector: str) -> list:
    return [p for p in core.list_namespaced_pod(RELEASE_NAMESPACE, label_selector=selector).items
            if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def ready(pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def is_ready(objects: Objects, name: str) -> bool:
    return (objects.condition(name) or {}).get("status") == "True"


def example(name: str, namespace: str) -> dict:
    body = yaml.safe_load((ROOT / "examples" / name).read_text())
    body["metadata"]["namespace"] = namespace
    return body


def create(custom, body: dict) -> None:
    plural = body["kind"].lower() + "s"
    custom.create_namespaced_custom_object(GROUP, VERSION, body["metadata"]["namespace"], plural, body)


def test_the_operator_and_its_mlflow_server_run_as_non_root_pods_on_the_real_node(chart, core):
    for selector in (OPERATOR_PODS, MLFLOW_PODS):
        [pod] = wait_for(lambda s=selector: [p for p in running_pods(core, s) if ready(p)], timeout=120,
                         message=f"a Ready pod for {selector}")
        assert pod.spec.node_name == "localhost"
        [container] = pod.spec.containers
        assert container.security_context.read_only_root_filesystem is True
        assert pod.spec.security_context.run_as_non_root is True
        uid = chart.kubectl("exec", "-n", RELEASE_NAMESPACE, pod.metadata.name, "--", "id", "-u").stdout.strip()
        assert uid == "10001"
        assert container.readiness_probe.http_get.path in ("/healthz", "/health")


def test_the_operator_pod_serves_prometheus_metrics(chart):
    url = f"http://127.0.0.1:{chart.ports['chart-operator-metrics']}/metrics"
    body = wait_for(lambda: urllib.request.urlopen(url, timeout=5).read().decode(), timeout=60,
                    message="the chart operator's /metrics")
    assert "mlflow_operator_reconciles_total" in body
    assert "process_resident_memory_bytes" in body


def test_the_examples_go_end_to_end_through_the_charts_operator_and_mlflow_server(chart, core, custom,
                                                                                chart_namespace):
    """Experiment, TrainingRun (the churn image, on the real node) and RegisteredModel, all
    against the chart's embedded MLflow server, whose data lands on the sandbox's volume."""
    # The chart's server keeps its data on the volume across installs: a model name of its own.
    model_name = f"churn-{uuid.uuid4().hex[:8]}"
    experiment, run, model = (example(name, chart_namespace) for name in (
        "01-experiment.yaml", "02-trainingrun.yaml", "03-registeredmodel.yaml"))
    run["spec"]["registerModel"]["name"] = model["spec"]["name"] = model_name
    for body in (experiment, run, model):
        create(custom, body)
    runs = Objects(custom, chart_namespace, "trainingruns", "TrainingRun")
    run = runs.wait_ready("churn-rf-1", timeout=300)["status"]
    assert run["runStatus"] == "FINISHED" and run["trackingUri"] == chart_tracking_uri(chart)
    [pod] = core.list_namespaced_pod(chart_namespace, label_selector="job-name=churn-rf-1").items
    assert pod.spec.node_name == "localhost"
    models = Objects(custom, chart_namespace, "registeredmodels", "RegisteredModel")
    models.wait_ready("churn-model", timeout=120)

    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=chart_tracking_uri(chart), registry_uri=chart_tracking_uri(chart))
    assert mlflow.get_model_version_by_alias(model_name, "champion").version == "1"
    assert mlflow.get_run(run["runId"]).data.metrics["accuracy"] > 0.9
    assert (chart.state / "volumes" / "mlflow" / "mlflow.db").stat().st_size > 0


def test_the_operator_pods_resident_memory_is_measured(chart, core):
    """Not a limit: the number the README quotes, printed with -s."""
    [pod] = running_pods(core, OPERATOR_PODS)
    status = chart.kubectl("exec", "-n", RELEASE_NAMESPACE, pod.metadata.name, "--",
                           "cat", "/proc/1/status").stdout
    rss_kib = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1))
    print(f"operator pod RSS: {rss_kib / 1024:.0f} MiB")
    assert 20 * 1024 < rss_kib < 512 * 1024  # alive, and below the chart's memory limit


def test_helm_upgrade_with_a_changed_value_rolls_the_pod_and_keeps_objects_ready(chart, core, custom,
                                                                               chart_namespace):
    experiments = Objects(custom, chart_namespace, "experiments", "Experiment")
    experiments.create("kept", {"description": "before the upgrade"})
    experiments.wait_ready("kept", timeout=60)
    [old] = running_pods(core, OPERATOR_PODS)

    upgraded = chart.sandbox("chart", "--set", "driftInterval=12")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr

    [new] = wait_for(lambda: [p for p in running_pods(core, OPERATOR_PODS) if ready(p)], timeout=120,
                     message="the upgraded operator pod")
    assert new.metadata.name != old.metadata.name
    assert "--drift-interval=12" in new.spec.containers[0].args
    assert is_ready(experiments, "kept")
    # The new pod reconciles: a spec change made after the roll reaches MLflow.
    experiments.patch_spec("kept", {"description": "after the upgrade"})
    wait_for(lambda: experiments.get("kept")["status"].get("observedGeneration") == 2 and is_ready(experiments, "kept"),
             timeout=60, message="the new pod to reconcile the change")


def test_helm_uninstall_leaves_no_orphans_and_no_stuck_finalizers(chart, core, custom, batch,
                                                                chart_namespace):
    experiments = Objects(custom, chart_namespace, "experiments", "Experiment")
    runs = Objects(custom, chart_namespace, "trainingruns", "TrainingRun")
    experiments.create("stays", {})
    runs.create("trained", {"experimentRef": {"name": "stays"}, "template": {"spec": {"containers": [{
        "name": "train", "image": "mlflow-operator-examples/churn-train:0.1.0",
        "command": ["python", "-c", "print('done')"]}]}}})
    runs.wait_ready("trained", timeout=180)
    # A Job that is still running keeps the Job-outcome finalizer until the operator records it.
    runs.create("running", {"experimentRef": {"name": "stays"}, "template": {"spec": {"containers": [{
        "name": "train", "image": "mlflow-operator-examples/churn-train:0.1.0",
        "command": ["python", "-c", "import time; time.sleep(600)"]}]}}})
    wait_for(lambda: JOB_FINALIZER in (batch.read_namespaced_job("running", chart_namespace).metadata.finalizers
                                       or []), timeout=60, message="the running Job with the operator's finalizer")
    assert OPERATOR_FINALIZER in experiments.get("stays")["metadata"]["finalizers"]

    started = time.monotonic()
    helm(chart, "uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--wait", "--timeout=5m")
    print(f"helm uninstall took {time.monotonic() - started:.1f}s")

    # Nothing of the release is left but the PVC it keeps on purpose (helm.sh/resource-policy).
    leftovers = chart.kubectl("get", "all,serviceaccounts,roles,rolebindings,configmaps,secrets,leases",
                              "-n", RELEASE_NAMESPACE, "-l", INSTANCE, "-o", "name").stdout.split()
    assert leftovers == []
    cluster_leftovers = chart.kubectl("get", "clusterroles,clusterrolebindings,clusterkopfpeerings",
                                      "-l", INSTANCE, "-o", "name", check=False).stdout.split()
    assert cluster_leftovers == []
    assert chart.kubectl("get", "pvc", "-n", RELEASE_NAMESPACE, "-l", INSTANCE, "-o", "name").stdout.split() == [
        f"persistentvolumeclaim/{FULLNAME}-mlflow"]

    # The objects stay, without the operator's finalizers, so deleting them does not hang.
    for objects, name in ((experiments, "stays"), (runs, "trained"), (runs, "running")):
        assert OPERATOR_FINALIZER not in (objects.get(name)["metadata"].get("finalizers") or [])
    for job in ("trained", "running"):
        try:
            finalizers = batch.read_namespaced_job(job, chart_namespace).metadata.finalizers or []
        except ApiException as error:
            assert error.status == 404
            continue
        assert JOB_FINALIZER not in finalizers
    runs.delete("running")
    experiments.delete("stays")
    wait_for(lambda: not experiments.exists("stays") and not runs.exists("running"), timeout=30,
             message="the objects to be deleted without an operator")
