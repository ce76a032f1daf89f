"""Shared fixtures. End-to-end tests run against the sandbox (`make sandbox-up`), the same
cluster and MLflow server a developer uses; each test works in a namespace of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "sandbox"))

from helpers import TRAINING_CLUSTER_ROLE, Objects, bind_cluster_role, wait_for  # noqa: E402


@dataclass(frozen=True)
class SandboxInfo:
    state: Path
    kubeconfig: Path
    tracking_uri: str
    ports: dict[str, int]

    @property
    def open_tracking_uri(self) -> str:
        """The sandbox's server without workspaces or authentication: there the tag rules keep
        namespaces apart (the default server, `tracking_uri`, is a workspace server)."""
        return f"http://127.0.0.1:{self.ports['mlflow-open']}"

    @property
    def user_token(self) -> str:
        """`.sandbox/env`'s MLFLOW_TRACKING_TOKEN: a user allowed in every MLflow workspace."""
        return (self.state / "mlflow-user-token").read_text().strip()

    @property
    def auth_tracking_uri(self) -> str:
        """The sandbox's second MLflow server, which requires basic auth."""
        return f"http://127.0.0.1:{self.ports['mlflow-auth']}"

    @property
    def auth_admin_password(self) -> str:
        return (self.state / "mlflow-auth" / "admin-password").read_text().strip()

    @property
    def bin(self) -> Path:
        return self.state / "bin"

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}",
             f"--cache-dir={self.state / 'kube-cache'}", *args],
            input=input_text, capture_output=True, text=True, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def sandbox(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / "sandbox" / "sandbox.py"), *args],
            capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
        )


def cluster_mode() -> bool:
    """`make test-cluster` runs the tests marked any_cluster against the cluster KUBECONFIG names."""
    return os.environ.get("MLFLOW_OPERATOR_E2E_TARGET") == "cluster"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    needs_sandbox = pytest.mark.skip(reason="needs the sandbox (its processes, servers or node); "
                                            "make test-cluster runs only the tests marked any_cluster")
    for item in items:
        if "/e2e/" in str(item.path):
            item.add_marker(pytest.mark.sandbox)
            if cluster_mode() and item.get_closest_marker("any_cluster") is None:
                item.add_marker(needs_sandbox)


@pytest.fixture(scope="session")
def sandbox() -> SandboxInfo:
    """The running sandbox; brought up (idempotently) if something is not running."""
    state = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox")).resolve()
    result = subprocess.run(
        [sys.executable, str(ROOT / "sandbox" / "sandbox.py"), "up"],
        capture_output=True, text=True, timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"sandbox up failed:\n{result.stdout}\n{result.stderr}")
    ports = json.loads((state / "ports.json").read_text())
    return SandboxInfo(
        state=state,
        kubeconfig=state / "kubeconfig",
        tracking_uri=f"http://127.0.0.1:{ports['mlflow']}",
        ports=ports,
    )


@pytest.fixture(scope="session")
def kubeconfig(request) -> Path:
    """The sandbox's kubeconfig, or in cluster mode the one KUBECONFIG names (no sandbox started)."""
    if cluster_mode():
        named = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
        path = Path(named or Path.home() / ".kube" / "config")
        if not path.exists():
            pytest.fail(f"cluster mode: no kubeconfig at {path}; set KUBECONFIG")
        return path
    return request.getfixturevalue("sandbox").kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path):
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture(scope="session")
def core(api_client):
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def batch(api_client):
    from kubernetes import client

    return client.BatchV1Api(api_client)


@pytest.fixture(scope="session")
def custom(api_client):
    from kubernetes import client

    return client.CustomObjectsApi(api_client)


@pytest.fixture
def experiments(custom, namespace) -> Objects:
    """The test namespace's objects of each kind."""
    return Objects(custom, namespace, "experiments", "Experiment")


@pytest.fixture
def runs(custom, namespace) -> Objects:
    return Objects(custom, namespace, "trainingruns", "TrainingRun")


@pytest.fixture
def models(custom, namespace) -> Objects:
    return Objects(custom, namespace, "registeredmodels", "RegisteredModel")


@pytest.fixture
def sweeps(custom, namespace) -> Objects:
    return Objects(custom, namespace, "trainingsweeps", "TrainingSweep")


def new_team_namespace(core, name: str, sandbox: SandboxInfo) -> None:
    """A namespace set up as a team's: its default ServiceAccount may log to MLflow, and the
    workspace server already knows it as a workspace (its namespace cache is an informer, a
    moment behind the API server)."""
    from kubernetes import client

    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_for(lambda: _has_default_sa(core, name), timeout=30, message=f"default ServiceAccount in namespace {name}")
    bind_cluster_role(core.api_client, name, TRAINING_CLUSTER_ROLE, "default")
    wait_for(lambda: _workspace_known(sandbox, name), timeout=30, message=f"MLflow workspace {name}")


def _workspace_known(sandbox: SandboxInfo, name: str) -> bool:
    import requests

    reply = requests.get(f"{sandbox.tracking_uri}/api/3.0/mlflow/workspaces/{name}",
                         headers={"Authorization": f"Bearer {sandbox.user_token}"}, timeout=5)
    return reply.status_code == 200


@pytest.fixture
def namespace(core, request, sandbox: SandboxInfo) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (its objects go with it). The MLflow
    client works in its workspace (mlflow.set_workspace) for the test."""
    import mlflow

    base = request.node.name.lower().replace("_", "-")[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"
    new_team_namespace(core, name, sandbox)
    mlflow.set_workspace(name)
    yield name
    mlflow.set_workspace(None)
    core.delete_namespace(name, propagation_policy="Background")


@pytest.fixture
def other_namespace(core, sandbox: SandboxInfo) -> Iterator[str]:
    """A second tenant's namespace, for tests where one tenant tries to reach another's."""
    name = f"t-tenant-b-{uuid.uuid4().hex[:6]}"
    new_team_namespace(core, name, sandbox)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


def _has_default_sa(core, namespace: str) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        core.read_namespaced_service_account("default", namespace)
        return True
    except ApiException:
        return False


@pytest.fixture(scope="session")
def mlflow_client(sandbox: SandboxInfo):
    os.environ["MLFLOW_TRACKING_URI"] = sandbox.tracking_uri
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # The default server is a workspace server: the sandbox user's token, in the workspace of
    # the test's namespace (the `namespace` fixture sets it).
    os.environ["MLFLOW_TRACKING_TOKEN"] = sandbox.user_token
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=sandbox.tracking_uri, registry_uri=sandbox.tracking_uri)


class OpenServerClient:
    """An MlflowClient of the sandbox's server without workspaces (`mlflow-open`), each call
    made outside any workspace (MLflow's client refuses an active one there)."""

    def __init__(self, uri: str) -> None:
        from mlflow import MlflowClient

        self._client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        self.tracking_uri = uri

    def __getattr__(self, name: str):
        from helpers import outside_workspaces

        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        def call(*args, **kwargs):
            with outside_workspaces():
                return attribute(*args, **kwargs)

        return call


@pytest.fixture(scope="session")
def open_mlflow_client(sandbox: SandboxInfo, mlflow_client) -> OpenServerClient:
    return OpenServerClient(sandbox.open_tracking_uri)

