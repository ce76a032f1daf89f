"""The Helm chart installed for real. In the sandbox (make test) `sandbox.py chart`, what
`make sandbox-helm` runs, puts the chart's operator and embedded MLflow server on the real node
with the locally built images and stops the sandbox's own operator process; against any other
cluster (make test-cluster, chart_target.py) it is a plain `helm upgrade --install`. The tests
share one install and run in file order; the last one uninstalls, and the module's teardown
puts the target back as the other tests expect it.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import urllib.request
import uuid
from typing import Any, Iterator

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from chart_target import ROOT, TRAINING_IMAGE, ChartTarget, ClusterTarget, SandboxTarget, cluster_mode
from helpers import GROUP, VERSION, Objects, bind_cluster_role, wait_for

pytestmark = pytest.mark.any_cluster
OPERATOR_FINALIZER = "mlflow.operator.dev/finalizer"
JOB_FINALIZER = "mlflow.operator.dev/job-outcome"


@pytest.fixture(scope="module")
def chart(request, kubeconfig) -> Iterator[ChartTarget]:
    target: ChartTarget = ClusterTarget(kubeconfig) if cluster_mode() else SandboxTarget(
        request.getfixturevalue("sandbox"))
    target.install()
    yield target
    target.helm("uninstall", target.release, "--namespace", target.namespace, "--ignore-not-found", "--wait")
    # A failed uninstall hook leaves its Job and RBAC behind for inspection: not for the next test.
    target.kubectl("delete", "jobs,serviceaccounts,roles,rolebindings", "-n", target.namespace, "-l", target.instance,
                   "--ignore-not-found", "--wait=false")
    target.kubectl("delete", "clusterroles,clusterrolebindings", "-l", target.instance, "--ignore-not-found")
    target.after_module()


@pytest.fixture
def chart_namespace(chart, core, namespace) -> str:
    """A test namespace set up as a team's for the chart's embedded server (a workspace
    server): its training pods may log as their ServiceAccount (the chart's training role),
    and a `reader` ServiceAccount stands for a person reading MLflow. In the sandbox its
    training pods run on the real node."""
    from kubernetes import client

    if chart.namespace_labels:
        core.patch_namespace(namespace, {"metadata": {"labels": chart.namespace_labels}})
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="reader")))
    bind_cluster_role(core.api_client, namespace, f"{chart.fullname}-training", "default", "reader",
                      name="chart-mlflow-training")
    return namespace


@contextlib.contextmanager
def embedded_mlflow(chart: ChartTarget, namespace: str) -> Iterator[Any]:
    """An MLflow client of the chart's embedded server, as the namespace's `reader`, in its
    workspace."""
    from mlflow import MlflowClient

    token = chart.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    with chart.reach("-mlflow", chart.mlflow_port) as base, _environment(MLFLOW_TRACKING_TOKEN=token,
                                                                         MLFLOW_WORKSPACE=namespace):
        yield MlflowClient(tracking_uri=base, registry_uri=base)


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def operator_pods(chart: ChartTarget) -> str:
    return f"{chart.instance},app.kubernetes.io/component=operator"


def mlflow_pods(chart: ChartTarget) -> str:
    return f"{chart.instance},app.kubernetes.io/component=mlflow"


def running_pods(core, chart: ChartTarget, selector: str) -> list:
    return [p for p in core.list_namespaced_pod(chart.namespace, label_selector=selector).items
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


def apply_examples(custom, namespace: str) -> tuple[str, dict]:
    """The example Experiment, TrainingRun and RegisteredModel, the model under a name of its
    own (a chart's server keeps its data across installs); returns that name and the run's
    status once the run and the model are Ready."""
    model_name = f"churn-{uuid.uuid4().hex[:8]}"
    experiment, run, model = (example(name, namespace) for name in (
        "01-experiment.yaml", "02-trainingrun.yaml", "03-registeredmodel.yaml"))
    run["spec"]["registerModel"]["name"] = model["spec"]["name"] = model_name
    for body in (experiment, run, model):
        create(custom, body)
    status = Objects(custom, namespace, "trainingruns", "TrainingRun").wait_ready("churn-rf-1", timeout=300)["status"]
    Objects(custom, namespace, "registeredmodels", "RegisteredModel").wait_ready("churn-model", timeout=120)
    return model_name, status


def in_pod(chart: ChartTarget, pod, *command: str) -> str:
    return chart.kubectl("exec", "-n", chart.namespace, pod.metadata.name, "--", *command).stdout.strip()


def test_the_operator_and_its_mlflow_server_run_as_non_root_pods_on_the_real_node(chart, core):
    for selector in (operator_pods(chart), mlflow_pods(chart)):
        def ready_pods(selector: str = selector) -> list:
            return [p for p in running_pods(core, chart, selector) if ready(p)]

        [pod] = wait_for(ready_pods, timeout=120, message=f"a Ready pod for {selector}")
        if chart.node_name:
            assert pod.spec.node_name == chart.node_name
        [container] = pod.spec.containers
        assert container.security_context.read_only_root_filesystem is True
        assert pod.spec.security_context.run_as_non_root is True
        assert in_pod(chart, pod, "id", "-u") == "10001"
        assert container.readiness_probe.http_get.path in ("/healthz", "/health")


def test_the_operator_pod_serves_prometheus_metrics(chart):
    with chart.reach("-metrics", chart.metrics_port()) as base:
        body = wait_for(lambda: urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode(), timeout=60,
                        message="the chart operator's /metrics")
    assert "mlflow_operator_reconciles_total" in body
    assert "process_resident_memory_bytes" in body


def test_the_examples_go_end_to_end_through_the_charts_operator_and_mlflow_server(chart, core, custom,
                                                                                chart_namespace):
    """Experiment, TrainingRun (the churn image, on the real node) and RegisteredModel, all
    against the chart's embedded MLflow server, whose data lands on its volume."""
    model_name, run = apply_examples(custom, chart_namespace)
    assert run["runStatus"] == "FINISHED" and run["trackingUri"] == chart.tracking_uri()
    [pod] = core.list_namespaced_pod(chart_namespace, label_selector="job-name=churn-rf-1").items
    if chart.node_name:
        assert pod.spec.node_name == chart.node_name

    with embedded_mlflow(chart, chart_namespace) as mlflow:
        assert mlflow.get_model_version_by_alias(model_name, "champion").version == "1"
        assert mlflow.get_run(run["runId"]).data.metrics["accuracy"] > 0.9
    [server] = running_pods(core, chart, mlflow_pods(chart))
    assert int(in_pod(chart, server, "stat", "-c", "%s", "/mlflow/mlflow.db")) > 0


def test_the_operator_pods_resident_memory_is_measured(chart, core):
    """Not a limit: the number the README quotes, printed with -s."""
    [pod] = running_pods(core, chart, operator_pods(chart))
    status = in_pod(chart, pod, "cat", "/proc/1/status")
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found is not None, status
    rss_kib = int(found.group(1))
    print(f"operator pod RSS: {rss_kib / 1024:.0f} MiB")
    assert 20 * 1024 < rss_kib < 512 * 1024  # alive, and below the chart's memory limit


def test_helm_upgrade_with_a_changed_value_rolls_the_pod_and_keeps_objects_ready(chart, core, custom,
                                                                               chart_namespace):
    experiments = Objects(custom, chart_namespace, "experiments", "Experiment")
    experiments.create("kept", {"description": "before the upgrade"})
    experiments.wait_ready("kept", timeout=60)
    [old] = running_pods(core, chart, operator_pods(chart))

    chart.install("driftInterval=12")

    [new] = wait_for(lambda: [p for p in running_pods(core, chart, operator_pods(chart)) if ready(p)], timeout=120,
                     message="the upgraded operator pod")
    assert new.metadata.name != old.metadata.name
    assert "--drift-interval=12" in new.spec.containers[0].args
    assert is_ready(experiments, "kept")
    # The new pod reconciles: a spec change made after the roll reaches MLflow.
    experiments.patch_spec("kept", {"description": "after the upgrade"})
    wait_for(lambda: experiments.get("kept")["status"].get("observedGeneration") == 2 and is_ready(experiments, "kept"),
             timeout=60, message="the new pod to reconcile the change")


def test_two_replicas_as_pods_fail_over_when_the_active_one_is_deleted(chart, core, custom, batch, chart_namespace):
    """Replicas on one host network cannot both bind a port: exec probes and no metrics port."""
    chart.install("replicaCount=2", "health.probe=exec", "metrics.enabled=false")
    wait_for(lambda: len([p for p in running_pods(core, chart, operator_pods(chart)) if ready(p)]) == 2, timeout=120,
             message="two Ready operator pods")
    experiments = Objects(custom, chart_namespace, "experiments", "Experiment")
    runs = Objects(custom, chart_namespace, "trainingruns", "TrainingRun")
    experiments.create("before", {})
    experiments.wait_ready("before", timeout=60)
    # A run in flight across the fail-over.
    runs.create("across", {"experimentRef": {"name": "before"}, "template": {"spec": {"containers": [{
        "name": "train", "image": TRAINING_IMAGE,
        "command": ["python", "-c", "import time; time.sleep(20)"]}]}}})
    wait_for(lambda: runs.get("across").get("status", {}).get("phase") == "Running", timeout=90,
             message="the run to be Running")

    active = active_peer(chart, custom)
    started = time.monotonic()
    core.delete_namespaced_pod(active, chart.namespace)
    experiments.create("after", {})
    experiments.wait_ready("after", timeout=120)
    print(f"fail-over: an Experiment created when the active pod was deleted was Ready after "
          f"{time.monotonic() - started:.1f}s")
    assert active_peer(chart, custom) != active

    run = runs.wait_ready("across", timeout=180)
    assert run["status"]["phase"] == "Succeeded"
    assert len(batch.list_namespaced_job(chart_namespace, label_selector="mlflow.operator.dev/training-run=across")
               .items) == 1
    with embedded_mlflow(chart, chart_namespace) as mlflow:
        found = mlflow.search_runs(
            [experiments.get("before")["status"]["experimentId"]],
            filter_string=f"tags.`k8s.uid` = '{run['metadata']['uid']}'")
    assert [r.info.run_id for r in found] == [run["status"]["runId"]]


def active_peer(chart: ChartTarget, custom) -> str:
    """The pod kopf peering made active: the live peer with the highest priority."""
    peering = custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", chart.fullname)
    peers = peering.get("status") or {}
    return max(peers, key=lambda name: peers[name]["priority"])


def test_helm_uninstall_leaves_no_orphans_and_no_stuck_finalizers(chart, core, custom, batch,
                                                                chart_namespace):
    experiments = Objects(custom, chart_namespace, "experiments", "Experiment")
    runs = Objects(custom, chart_namespace, "trainingruns", "TrainingRun")
    experiments.create("stays", {})
    runs.create("trained", {"experimentRef": {"name": "stays"}, "template": {"spec": {"containers": [{
        "name": "train", "image": TRAINING_IMAGE,
        "command": ["python", "-c", "print('done')"]}]}}})
    runs.wait_ready("trained", timeout=180)
    # A Job that is still running keeps the Job-outcome finalizer until the operator records it.
    runs.create("running", {"experimentRef": {"name": "stays"}, "template": {"spec": {"containers": [{
        "name": "train", "image": TRAINING_IMAGE,
        "command": ["python", "-c", "import time; time.sleep(600)"]}]}}})
    wait_for(lambda: JOB_FINALIZER in (batch.read_namespaced_job("running", chart_namespace).metadata.finalizers
                                       or []), timeout=60, message="the running Job with the operator's finalizer")
    assert OPERATOR_FINALIZER in experiments.get("stays")["metadata"]["finalizers"]

    started = time.monotonic()
    chart.helm("uninstall", chart.release, "--namespace", chart.namespace, "--wait", "--timeout=5m")
    print(f"helm uninstall took {time.monotonic() - started:.1f}s")

    # Nothing of the release is left but what it keeps on purpose (helm.sh/resource-policy): the
    # PVC below, and the key that signed its ownership tags (a reinstall verifies them again).
    leftovers = chart.kubectl("get", "all,serviceaccounts,roles,rolebindings,configmaps,secrets,leases",
                              "-n", chart.namespace, "-l", chart.instance, "-o", "name").stdout.split()
    assert leftovers == [f"secret/{chart.fullname}-ownership-keys"]
    cluster_leftovers = chart.kubectl("get", "clusterroles,clusterrolebindings,clusterkopfpeerings",
                                      "-l", chart.instance, "-o", "name", check=False).stdout.split()
    assert cluster_leftovers == []
    kept = [f"persistentvolumeclaim/{chart.fullname}-mlflow"] if chart.keeps_mlflow_volume() else []
    assert chart.kubectl("get", "pvc", "-n", chart.namespace, "-l", chart.instance, "-o", "name").stdout.split() == kept

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
