"""The Helm chart against the sandbox: lint, render both RBAC modes and have the API server
validate them, install it, and run the operator under the chart's ServiceAccount and
namespaced RBAC through a TrainingRun's whole life.

(The sandbox's own operator already runs under the chart's cluster-scope ServiceAccount and
RBAC for every other test; see sandbox.py `ensure_operator_identity`.)
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from helpers import Objects, wait_for
from play_training import play

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlflow-operator"
KUBE_VERSION = "1.34.0"
TRAINER = [sys.executable, "-W", "ignore", str(Path(__file__).parent / "trainers" / "log_model.py")]


def helm(sandbox, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(sandbox.bin / "helm"), f"--kubeconfig={sandbox.kubeconfig}", *args],
                            capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed: {result.stdout}\n{result.stderr}")
    return result


def render(sandbox, release: str, namespace: str, *sets: str, include_crds: bool = False) -> str:
    args = ["template", release, str(CHART), "--kube-version", KUBE_VERSION, "--namespace", namespace,
            *(["--include-crds"] if include_crds else [])]
    for item in sets:
        args += ["--set", item]
    return helm(sandbox, *args).stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def token_kubeconfig(sandbox, service_account: str, namespace: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the ServiceAccount with a TokenRequest token."""
    token = sandbox.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "s", "cluster": {"server": f"https://127.0.0.1:{sandbox.ports['kube-apiserver']}",
                                               "certificate-authority": str(sandbox.state / "pki" / "ca.crt")}}],
        "users": [{"name": "op", "user": {"token": token}}],
        "contexts": [{"name": "s", "context": {"cluster": "s", "user": "op"}}],
        "current-context": "s",
    }))
    # The same token is the operator's bearer for the workspace server (workspace_flags).
    (path.parent / "token").write_text(token)
    return path


def is_operator_rbac(document: dict) -> bool:
    """The operator's ServiceAccount, Roles and bindings in namespaced scope, and the one
    cluster-wide grant it has there: creating SubjectAccessReviews (workspace servers)."""
    if document["kind"] in ("ClusterRole", "ClusterRoleBinding"):
        return document["metadata"]["name"].endswith("-access-reviews")
    return document["kind"] in ("ServiceAccount", "Role", "RoleBinding")


def workspace_flags(sandbox, kubeconfig: Path) -> list[str]:
    """The sandbox's default server is a workspace server: an operator started here calls it
    as the ServiceAccount its kubeconfig names."""
    return [f"--workspace-tracking-server={sandbox.tracking_uri}",
            f"--workspace-token-file={kubeconfig.parent / 'token'}"]


def test_the_chart_lints_strictly(sandbox):
    helm(sandbox, "lint", "--strict", str(CHART))
    helm(sandbox, "lint", "--strict", str(CHART), "--set", "watch.scope=namespaces",
         "--set", "watch.namespaces={a,b}", "--set", "replicaCount=2")


def test_values_outside_the_schema_are_refused(sandbox):
    result = helm(sandbox, "template", "x", str(CHART), "--kube-version", KUBE_VERSION, "--set", "replicas=2",
                  check=False)
    assert result.returncode != 0 and "additional properties 'replicas' not allowed" in result.stderr
    result = helm(sandbox, "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
                  "--set", "watch.scope=namespaces", check=False)
    assert "list them in watch.namespaces" in result.stderr


def test_cluster_scope_rendering_is_accepted_by_the_api_server(sandbox, namespace):
    manifest = render(sandbox, f"dry-{uuid.uuid4().hex[:6]}", namespace)
    result = sandbox.kubectl("apply", "--dry-run=server", "-f", "-", input_text=manifest)
    kinds = sorted(line.split()[0].split("/")[0] for line in result.stdout.splitlines())
    assert kinds == sorted([
        "clusterrole.rbac.authorization.k8s.io", "clusterrolebinding.rbac.authorization.k8s.io",
        # SubjectAccessReviews before a training Job (and its binding); the training pods' role.
        "clusterrole.rbac.authorization.k8s.io", "clusterrolebinding.rbac.authorization.k8s.io",
        "clusterrole.rbac.authorization.k8s.io",
        # The embedded workspace server's own identity: namespaces and MLflowConfigs, read only.
        "serviceaccount", "clusterrole.rbac.authorization.k8s.io", "clusterrolebinding.rbac.authorization.k8s.io",
        "deployment.apps", "deployment.apps", "persistentvolumeclaim", "service", "service", "serviceaccount",
        # The uninstall hook: its own ServiceAccount, RBAC and Job.
        "serviceaccount", "role.rbac.authorization.k8s.io", "rolebinding.rbac.authorization.k8s.io",
        "clusterrole.rbac.authorization.k8s.io", "clusterrolebinding.rbac.authorization.k8s.io", "job.batch",
        # The key that signs ownership tags; the admission policies (templates, names) and their bindings.
        "secret", *["validatingadmissionpolicy.admissionregistration.k8s.io",
                    "validatingadmissionpolicybinding.admissionregistration.k8s.io"] * 2,
    ])


def test_namespaced_scope_with_peering_is_accepted_by_the_api_server(sandbox, namespace, core):
    from kubernetes import client

    other = f"{namespace[:50]}-b"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=other)))
    try:
        manifest = render(sandbox, f"dry-{uuid.uuid4().hex[:6]}", namespace, "watch.scope=namespaces",
                          f"watch.namespaces={{{namespace},{other}}}", "replicaCount=2", include_crds=True)
        documents = [d for d in yaml.safe_load_all(manifest) if d]
        crds = [d for d in documents if d["kind"] == "CustomResourceDefinition"
                and d["spec"]["group"] == "kopf.dev"]
        assert sorted(c["metadata"]["name"] for c in crds) == ["clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"]
        # Objects of kopf's peering kinds can only be validated once their CRDs exist.
        sandbox.kubectl("apply", "--server-side", "-f", "-", input_text=yaml.safe_dump_all(crds))
        sandbox.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=30s")
        rest = [d for d in documents if d["kind"] != "CustomResourceDefinition"]
        result = sandbox.kubectl("apply", "--dry-run=server", "-f", "-", input_text=yaml.safe_dump_all(rest))
        # The operator's Role in each namespace, and the uninstall hook's (plus one for pods);
        # ClusterRoles: access reviews', training pods', the embedded server's (Role and ClusterRole
        # lines alike).
        assert result.stdout.count("role.rbac.authorization.k8s.io/") == 8
        assert result.stdout.count("rolebinding.rbac.authorization.k8s.io/") == 7
        assert result.stdout.count("kopfpeering.kopf.dev/") == 2
        deployment = next(d for d in rest if d["kind"] == "Deployment" and "operator" in d["spec"]["template"]
                          ["metadata"]["labels"]["app.kubernetes.io/component"])
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--namespace={namespace}" in args and f"--namespace={other}" in args
        assert any(a.startswith("--peering=") for a in args)
    finally:
        core.delete_namespace(other)


def test_helm_install_brings_up_the_operator_and_mlflow_deployments(sandbox, namespace, api_client):
    from kubernetes import client

    release = f"inst-{uuid.uuid4().hex[:6]}"
    # The sandbox has no storage provisioner, so the embedded server keeps its data in an emptyDir.
    helm(sandbox, "install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s",
         "--set", "mlflow.persistence.enabled=false")
    try:
        apps = client.AppsV1Api(api_client)
        deployments = {d.metadata.name: d for d in apps.list_namespaced_deployment(namespace).items}
        assert set(deployments) == {f"{release}-mlflow-operator", f"{release}-mlflow-operator-mlflow"}
        for deployment in deployments.values():
            assert deployment.status.available_replicas == 1
        operator = deployments[f"{release}-mlflow-operator"].spec.template.spec
        container = operator.containers[0]
        assert container.security_context.read_only_root_filesystem is True
        assert container.security_context.allow_privilege_escalation is False
        assert operator.security_context.run_as_non_root is True
        assert container.liveness_probe.http_get.path == "/healthz"
        assert f"--tracking-uri=http://{release}-mlflow-operator-mlflow.{namespace}.svc:5000" in container.args
        mlflow_args = deployments[f"{release}-mlflow-operator-mlflow"].spec.template.spec.containers[0].args
        hosts = next(a for a in mlflow_args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
        assert f"{release}-mlflow-operator-mlflow.{namespace}.svc:*" in hosts
        assert "--workers=1" in mlflow_args
    finally:
        helm(sandbox, "uninstall", release, "--namespace", namespace, "--wait")


def test_the_sandbox_operator_runs_as_the_charts_service_account(sandbox, api_client):
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(sandbox.state / "operator.kubeconfig"), client_configuration=configuration)
    with client.ApiClient(configuration) as api:
        review = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())
    assert review.status.user_info.username == "system:serviceaccount:mlflow-operator-system:mlflow-operator"


@pytest.mark.parametrize(
    "verb, resource, group, allowed",
    [
        ("create", "jobs", "batch", True),
        ("get", "secrets", "", True),
        # The credentials watch (credentialsWatch); its label selector keeps other Secrets out.
        ("list", "secrets", "", True),
        ("watch", "secrets", "", True),
        ("create", "pods", "", False),
        ("delete", "pods", "", False),
        ("update", "trainingruns/finalizers", "mlflow.operator.dev", True),
        ("delete", "experiments", "mlflow.operator.dev", False),
        ("create", "secrets", "", False),
    ],
)
def test_the_charts_cluster_role_grants_what_the_operator_uses_and_no_more(api_client, verb, resource, group, allowed):
    from kubernetes import client

    name, _, subresource = resource.partition("/")
    review = client.AuthorizationV1Api(api_client).create_subject_access_review(client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user="system:serviceaccount:mlflow-operator-system:mlflow-operator",
            resource_attributes=client.V1ResourceAttributes(
                namespace="default", verb=verb, resource=name, subresource=subresource or None, group=group),
        )))
    assert review.status.allowed is allowed


def test_namespaced_rbac_runs_a_training_run_lifecycle(sandbox, namespace, custom, core, mlflow_client, tmp_path):
    """The chart's namespaced Roles, and only them, are enough for a whole TrainingRun."""
    release = f"ns-{uuid.uuid4().hex[:6]}"
    manifest = render(sandbox, release, namespace, "watch.scope=namespaces", f"watch.namespaces={{{namespace}}}",
                      "mlflow.enabled=false")
    rbac = [d for d in yaml.safe_load_all(manifest) if d and is_operator_rbac(d)]
    sandbox.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(rbac))
    service_account = next(d["metadata"]["name"] for d in rbac if d["kind"] == "ServiceAccount")
    kubeconfig = token_kubeconfig(sandbox, service_account, namespace, tmp_path / "kubeconfig")
    health = free_port()
    log_path = tmp_path / "operator.log"
    stopped = sandbox.sandbox("stop", "operator")
    assert stopped.returncode == 0, stopped.stderr
    process = None
    try:
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [str(ROOT / ".venv" / "bin" / "mlflow-operator"), "run", f"--namespace={namespace}",
                 f"--tracking-uri={sandbox.tracking_uri}", *workspace_flags(sandbox, kubeconfig), "--drift-interval=5",
                 f"--health-port={health}", "--metrics-port=0", "--bind-address=127.0.0.1",
                 f"--ownership-keys={sandbox.state / 'ownership-keys'}"],
                env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2).status == 200,
                 timeout=30, message="the namespaced operator to be healthy")
        experiments = Objects(custom, namespace, "experiments", "Experiment")
        runs = Objects(custom, namespace, "trainingruns", "TrainingRun")
        experiments.create("exp", {})
        experiments.wait_ready("exp")
        model = f"ns-model-{uuid.uuid4().hex[:6]}"
        runs.create("run", {"experimentRef": {"name": "exp"}, "registerModel": {"name": model},
                            "template": {"metadata": {"annotations": {"sandbox.mlflow.operator.dev/hold": "true"}},
                                         "spec": {"containers": [{"name": "t", "image": "trainer:1"}]}}})
        assert play(namespace, "run", TRAINER + ["--model-name", "model", "--metric", "acc=0.5"]) == 0
        status = runs.wait_ready("run")["status"]
        assert status["modelVersion"]["version"] == "1"
        runs.delete("run")
        wait_for(lambda: not runs.exists("run"), timeout=30, message="the TrainingRun to be deleted")
        text = log_path.read_text()
        assert "Forbidden" not in text and "forbidden" not in text, text[-3000:]
    finally:
        if process:
            process.terminate()
            process.wait(timeout=30)
        restarted = sandbox.sandbox("up")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr


def test_the_embedded_servers_allowed_hosts_accept_its_service_names_and_refuse_others(sandbox, tmp_path):
    """Run MLflow with exactly the arguments the chart gives the embedded server (paths and
    port made local) and check its Host-header allowlist with real requests. In open mode: the
    local MLflow (Python 3.11) has no Kubernetes plugins; the allowlist is the same either way."""
    manifest = render(sandbox, "hosts", "ml-platform", "mlflow.workspaces.enabled=false")
    deployment = next(d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "Deployment"
                      and d["metadata"]["name"].endswith("-mlflow"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    port = free_port()
    local = {"--backend-store-uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
             "--artifacts-destination": str(tmp_path / "artifacts"), "--host": "127.0.0.1", "--port": str(port)}
    args = [f"{a.split('=', 1)[0]}={local[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in local else a
            for a in container["args"]]
    assert container["command"] == ["mlflow", "server"]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}, "HOME": str(tmp_path)}
    log = (tmp_path / "mlflow.log").open("w")
    server = subprocess.Popen([str(ROOT / ".venv" / "bin" / "mlflow"), "server", *args], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def status_for(host: str) -> int:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
                                         headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200,
                 timeout=120, message="the embedded server's command to start")
        service = "hosts-mlflow-operator-mlflow"
        for host in (f"{service}:5000", f"{service}.ml-platform:5000", f"{service}.ml-platform.svc:5000",
                     f"{service}.ml-platform.svc.cluster.local:5000", "10.244.3.7:5000", f"localhost:{port}"):
            assert status_for(host) == 200, host
        assert status_for("evil.example.com:5000") == 403
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


# The metrics port of each peered replica, by its log.
metrics_ports: dict[Path, int] = {}


def drift_passes_stood_by(log_path: Path, kind: str = "Experiment") -> float:
    """How many drift passes of `kind` the replica writing `log_path` stood by for a peer."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_ports[log_path]}/metrics", timeout=5).read().decode()
    pattern = rf'^mlflow_operator_drift_passes_total{{kind="{kind}",outcome="standby"}} (\S+)$'
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def peered(sandbox, namespace, tmp_path):
    """Replicas of the operator peered under the chart's namespaced RBAC, instead of the
    sandbox's operator (restarted afterwards): `peered(name, priority)` starts one and
    returns its process and log."""
    release = f"peer-{uuid.uuid4().hex[:6]}"
    manifest = render(sandbox, release, namespace, "watch.scope=namespaces", f"watch.namespaces={{{namespace}}}",
                      "mlflow.enabled=false", "replicaCount=2", include_crds=True)
    documents = [d for d in yaml.safe_load_all(manifest) if d]
    crds = [d for d in documents if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == "kopf.dev"]
    sandbox.kubectl("apply", "--server-side", "-f", "-", input_text=yaml.safe_dump_all(crds))
    sandbox.kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=30s")
    keep = [d for d in documents if is_operator_rbac(d) or d["kind"] == "KopfPeering"]
    sandbox.kubectl("apply", "-f", "-", input_text=yaml.safe_dump_all(keep))
    peering = next(d["metadata"]["name"] for d in keep if d["kind"] == "KopfPeering")
    service_account = next(d["metadata"]["name"] for d in keep if d["kind"] == "ServiceAccount")
    kubeconfig = token_kubeconfig(sandbox, service_account, namespace, tmp_path / "kubeconfig")
    processes: list[subprocess.Popen] = []

    def start(name: str, priority: int) -> tuple[subprocess.Popen, Path]:
        health, metrics, log_path = free_port(), free_port(), tmp_path / f"{name}.log"
        process = subprocess.Popen(
            [str(ROOT / ".venv" / "bin" / "mlflow-operator"), "run", f"--namespace={namespace}",
             f"--tracking-uri={sandbox.tracking_uri}", *workspace_flags(sandbox, kubeconfig),
             f"--peering={peering}", f"--peering-priority={priority}",
             f"--health-port={health}", f"--metrics-port={metrics}", "--bind-address=127.0.0.1",
             "--drift-interval=5", f"--ownership-keys={sandbox.state / 'ownership-keys'}"],
            env={**os.environ, "KUBECONFIG": str(kubeconfig)}, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
        processes.append(process)
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2).status == 200,
                 timeout=30, message=f"operator {name} to be healthy")
        metrics_ports[log_path] = metrics
        return process, log_path

    stopped = sandbox.sandbox("stop", "operator")
    assert stopped.returncode == 0, stopped.stderr
    try:
        yield start
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=30)
        restarted = sandbox.sandbox("up")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr


def test_two_peered_replicas_work_one_at_a_time(peered, namespace, custom):
    """replicaCount > 1: kopf peering under the chart's namespaced RBAC keeps one replica
    active; when it stops, the standby takes over."""
    experiments = Objects(custom, namespace, "experiments", "Experiment")
    active, active_log = peered("active", 200)
    _, standby_log = peered("standby", 100)
    # kopf starts a peered operator paused until it has seen the peers: the standby never
    # un-pauses while the higher-priority replica is alive.
    experiments.create("first", {})
    experiments.wait_ready("first")
    assert "[{}/first]".format(namespace) in active_log.read_text()
    assert "[{}/first]".format(namespace) not in standby_log.read_text()
    active.terminate()  # a graceful exit removes its peering record at once
    active.wait(timeout=30)
    wait_for(lambda: "Resuming operations after the pause" in standby_log.read_text(), timeout=60,
             message="the standby replica to take over")
    experiments.create("second", {})
    experiments.wait_ready("second")
    assert "[{}/second]".format(namespace) in standby_log.read_text()


def test_a_replica_paused_for_a_peer_runs_no_drift_pass(peered, namespace, custom, mlflow_client):
    """The drift passes run outside kopf's handlers: a replica that worked, then stood by
    for a peer of higher priority, leaves the drift it saw to that peer."""
    experiments = Objects(custom, namespace, "experiments", "Experiment")
    _, first_log = peered("first", 100)
    experiments.create("tagged", {"tags": {"team": "a"}})
    experiment_id = experiments.wait_ready("tagged")["status"]["experimentId"]
    peered("second", 200)
    wait_for(lambda: "Pausing operations in favour of" in first_log.read_text(), timeout=60,
             message="the first replica to stand by")
    paused_at = len(first_log.read_text())

    mlflow_client.set_experiment_tag(experiment_id, "team", "changed by hand")
    wait_for(lambda: mlflow_client.get_experiment(experiment_id).tags.get("team") == "a", timeout=60,
             message="the active replica's drift pass to restore the tag")
    # Two more drift passes of the paused replica are due and stood by (a whole interval).
    standing_by = drift_passes_stood_by(first_log)
    wait_for(lambda: drift_passes_stood_by(first_log) >= standing_by + 2, timeout=30,
             message="the paused replica to stand by for two more drift passes")
    assert "[{}/tagged]".format(namespace) not in first_log.read_text()[paused_at:]


def test_without_the_credentials_watch_the_operator_may_only_get_secrets(sandbox):
    documents = [d for d in yaml.safe_load_all(render(sandbox, "nw", "ml", "credentialsWatch=false")) if d]
    role = next(d for d in documents if d["kind"] == "ClusterRole"
                and d["metadata"]["labels"].get("app.kubernetes.io/component") != "mlflow")
    secrets = [rule for rule in role["rules"] if "secrets" in rule.get("resources", [])]
    assert [rule["verbs"] for rule in secrets] == [["get"]]
    operator = next(d for d in documents if d["kind"] == "Deployment" and not d["metadata"]["name"].endswith("-mlflow"))
    assert "--no-credentials-watch" in operator["spec"]["template"]["spec"]["containers"][0]["args"]


def test_the_service_monitor_selects_the_metrics_service(sandbox):
    """The ServiceMonitor kind is the Prometheus Operator's and not installed in the sandbox,
    so this checks the rendering only: its selector matches the metrics Service."""
    documents = [d for d in yaml.safe_load_all(render(sandbox, "mon", "ml", "metrics.serviceMonitor.enabled=true",
                                                      "metrics.serviceMonitor.labels.release=prometheus")) if d]
    monitor = next(d for d in documents if d["kind"] == "ServiceMonitor")
    service = next(d for d in documents if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics"))
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
