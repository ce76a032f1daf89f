"""The sandbox is a real cluster: API server with RBAC and tokens, controllers, scheduler,
kwok nodes whose Job pods run and complete, the hold/finish annotations, and MLflow."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from helpers import stays, wait_for

GROUP, VERSION = "mlflow.operator.dev", "v1alpha1"
HOLD = "sandbox.mlflow.operator.dev/hold"
FINISH = "sandbox.mlflow.operator.dev/finish"


def job(name: str, annotations: dict[str, str] | None = None) -> client.V1Job:
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1JobSpec(
            backoff_limit=0,
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(annotations=annotations or {}),
                spec=client.V1PodSpec(
                    restart_policy="Never",
                    containers=[client.V1Container(name="train", image="busybox", command=["true"])],
                ),
            ),
        ),
    )


def job_condition(batch, namespace: str, name: str) -> str | None:
    status = batch.read_namespaced_job_status(name, namespace).status
    for condition in status.conditions or []:
        if condition.type in ("Complete", "Failed") and condition.status == "True":
            return condition.type
    return None


def job_pod(core, namespace: str, name: str) -> client.V1Pod:
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    assert len(pods) == 1, f"expected one pod for job {name}, got {len(pods)}"
    return pods[0]


def test_crds_are_established_with_the_mlflow_category(sandbox):
    result = sandbox.kubectl("api-resources", "--categories=mlflow", "-o", "name")
    assert sorted(result.stdout.split()) == [
        "experiments.mlflow.operator.dev",
        "registeredmodels.mlflow.operator.dev",
        "trainingruns.mlflow.operator.dev",
        "trainingsweeps.mlflow.operator.dev",
    ]


@pytest.mark.parametrize(
    "plural, kind, spec",
    [
        ("experiments", "Experiment", {"description": "smoke"}),
        ("registeredmodels", "RegisteredModel", {"description": "smoke"}),
        (
            "trainingruns",
            "TrainingRun",
            {
                "experimentName": "smoke",
                "template": {"spec": {"containers": [{"name": "train", "image": "busybox"}]}},
            },
        ),
    ],
)
def test_each_kind_can_be_created_and_read_back(custom, namespace, plural, kind, spec):
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": "smoke"}, "spec": spec}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, body)
    read = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, plural, "smoke")
    assert read["kind"] == kind
    for key, value in spec.items():
        assert read["spec"][key] == value


def test_a_job_gets_a_pod_that_runs_on_a_kwok_node_and_completes(batch, core, namespace):
    batch.create_namespaced_job(namespace, job("plain"))
    wait_for(lambda: job_condition(batch, namespace, "plain") == "Complete", timeout=60,
             message="job 'plain' to complete")
    pod = job_pod(core, namespace, "plain")
    assert pod.status.phase == "Succeeded"
    assert pod.spec.node_name.startswith("kwok-node-")


def test_a_held_pod_stays_running_until_finished_succeeded(batch, core, namespace):
    batch.create_namespaced_job(namespace, job("held-ok", {HOLD: "true"}))
    wait_for(lambda: job_pod(core, namespace, "held-ok").status.phase == "Running", timeout=60,
             message="held pod to run")
    # Unheld pods complete about a second after they start; a held one keeps running.
    assert stays(lambda: job_pod(core, namespace, "held-ok").status.phase == "Running", duration=4)
    pod = job_pod(core, namespace, "held-ok")
    core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"annotations": {FINISH: "succeeded"}}})
    wait_for(lambda: job_condition(batch, namespace, "held-ok") == "Complete", timeout=60,
             message="held job to complete")
    terminated = job_pod(core, namespace, "held-ok").status.container_statuses[0].state.terminated
    assert terminated.exit_code == 0


def test_a_held_pod_finished_failed_fails_its_job(batch, core, namespace):
    batch.create_namespaced_job(namespace, job("held-fail", {HOLD: "true"}))
    wait_for(lambda: job_pod(core, namespace, "held-fail").status.phase == "Running", timeout=60,
             message="held pod to run")
    pod = job_pod(core, namespace, "held-fail")
    core.patch_namespaced_pod(pod.metadata.name, namespace, {"metadata": {"annotations": {FINISH: "failed"}}})
    wait_for(lambda: job_condition(batch, namespace, "held-fail") == "Failed", timeout=60,
             message="held job to fail")
    pod = job_pod(core, namespace, "held-fail")
    assert pod.status.phase == "Failed"
    assert pod.status.container_statuses[0].state.terminated.exit_code == 1


def test_pods_get_a_service_account_token_from_the_token_request_api(batch, core, namespace):
    batch.create_namespaced_job(namespace, job("token"))
    wait_for(lambda: job_condition(batch, namespace, "token") == "Complete", timeout=60,
             message="job 'token' to complete")
    volumes = job_pod(core, namespace, "token").spec.volumes or []
    assert any(v.projected and any(s.service_account_token for s in v.projected.sources) for v in volumes)
    token = core.create_namespaced_service_account_token(
        "default", namespace, client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[]))
    )
    assert token.status.token.count(".") == 2  # a signed JWT


def test_rbac_is_enforced_for_service_accounts(api_client, namespace):
    review = client.AuthorizationV1Api(api_client).create_subject_access_review(
        client.V1SubjectAccessReview(
            spec=client.V1SubjectAccessReviewSpec(
                user=f"system:serviceaccount:{namespace}:default",
                resource_attributes=client.V1ResourceAttributes(namespace=namespace, verb="list", resource="secrets"),
            )
        )
    )
    assert review.status.allowed is False


def test_the_mlflow_server_answers_its_api_to_a_token_and_refuses_anyone_else(sandbox):
    url = f"{sandbox.tracking_uri}/api/2.0/mlflow/experiments/search?max_results=1"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {sandbox.user_token}",
                                                   "X-MLFLOW-WORKSPACE": "default"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert isinstance(json.loads(response.read()), dict)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401


def test_env_file_points_at_the_sandbox(sandbox):
    env = (sandbox.state / "env").read_text()
    assert f"export KUBECONFIG={sandbox.kubeconfig}" in env
    assert f"export MLFLOW_TRACKING_URI={sandbox.tracking_uri}" in env
    assert f"export PATH={sandbox.bin}:$PATH" in env
    for tool in ("kubectl", "helm"):
        assert os.access(sandbox.bin / tool, os.X_OK)


def test_up_again_restarts_nothing_that_runs(sandbox):
    pid_files = sorted((sandbox.state / "pids").glob("*.pid"))
    assert {p.stem for p in pid_files} >= {
        "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "mlflow", "mlflow-open",
        "mlflow-auth", "operator",
    }
    before = {p.stem: p.read_text() for p in pid_files}
    result = sandbox.sandbox("up")
    assert result.returncode == 0, result.stderr
    assert "already running" in result.stdout
    after = {p.stem: p.read_text() for p in sorted((sandbox.state / "pids").glob("*.pid"))}
    assert after == before


@pytest.fixture
def short_tmp_path() -> Iterator[Path]:
    """A directory with a short path: a sandbox's node keeps Unix sockets (107 bytes at most)
    under it, and pytest's tmp_path can be long enough to pass that."""
    path = Path(tempfile.mkdtemp(prefix="sbx-", dir="/tmp"))
    # Traversable by others, as a sandbox directory must be: its PostgreSQL runs as `postgres`
    # and its pods as uid 10001 (mkdtemp makes it 0700).
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_sandbox_directory_too_long_for_unix_sockets_is_refused_before_anything_starts(sandbox, short_tmp_path: Path):
    other = short_tmp_path / ("d" * 60) / "sandbox"
    other.mkdir(parents=True)
    (other / "bin").symlink_to(sandbox.bin, target_is_directory=True)
    up = sandbox.sandbox("up", env={"SANDBOX_DIR": str(other)})
    assert up.returncode != 0
    assert "too long for the node's Unix sockets" in up.stderr
    assert not list((other / "pids").glob("*.pid"))


def test_a_second_sandbox_comes_up_and_down_without_touching_the_first(sandbox, short_tmp_path: Path):
    """`down` stops exactly what its own `up` started (here: a sandbox in another directory)."""
    main_pids = {p.stem: int(p.read_text()) for p in (sandbox.state / "pids").glob("*.pid")}
    other = short_tmp_path / "sandbox"
    env = {"SANDBOX_DIR": str(other)}
    other.mkdir()
    (other / "bin").symlink_to(sandbox.bin, target_is_directory=True)
    try:
        up = sandbox.sandbox("up", env=env)
        assert up.returncode == 0, up.stdout + up.stderr
        other_pids = {p.stem: int(p.read_text()) for p in (other / "pids").glob("*.pid")}
        assert set(other_pids) == set(main_pids)
        assert not set(other_pids.values()) & set(main_pids.values())
    finally:
        down = sandbox.sandbox("down", env=env)
    assert down.returncode == 0, down.stderr
    for pid in other_pids.values():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1]
    for pid in main_pids.values():
        assert Path(f"/proc/{pid}").exists(), "the first sandbox lost a process"
