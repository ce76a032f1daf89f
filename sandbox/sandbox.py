"""The local sandbox: a real Kubernetes control plane, kwok nodes, MLflow and the operator.

    python sandbox/sandbox.py up        start what is not running, wait until all is ready
    python sandbox/sandbox.py down      stop exactly the processes `up` started
    python sandbox/sandbox.py status    one line per component
    python sandbox/sandbox.py stop COMPONENT...      stop the named components (e.g. to test an outage)
    python sandbox/sandbox.py restart COMPONENT...   stop them and bring everything up again

Everything lives under `.sandbox/` (override with SANDBOX_DIR): `env`, `kubeconfig`,
`pids/<component>.pid`, `logs/<component>.log`, the PKI, etcd's data and MLflow's store.
Binaries come from `.sandbox/bin/`, which `sandbox/build-binaries.sh` fills from its cache.
Ports are picked once, on the first `up`, and kept in `ports.json`, so that two checkouts
can run a sandbox each on one machine.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import stores  # noqa: E402 - beside this file

import node  # noqa: E402 - beside this file
from pki import Pki, ensure_pki, write_kubeconfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox")).resolve()
VENV = Path(os.environ.get("VENV", ROOT / ".venv")).resolve()
# The operator's runtime-only install (`make operator-venv`): what the image holds.
OPERATOR_VENV = Path(os.environ.get("OPERATOR_VENV", ROOT / ".venv-operator")).resolve()
BIN = STATE / "bin"
PIDS = STATE / "pids"
LOGS = STATE / "logs"
KUBECONFIG = STATE / "kubeconfig"
# The operator runs as the Helm chart's ServiceAccount, with the chart's RBAC, through a
# token from the TokenRequest API: a rule missing from the chart fails the tests.
OPERATOR_KUBECONFIG = STATE / "operator.kubeconfig"
# The key that signs the operator's ownership tags (the chart keeps it in a Secret).
OWNERSHIP_KEYS = STATE / "ownership-keys"
OPERATOR_NAMESPACE = "mlflow-operator-system"
OPERATOR_SERVICE_ACCOUNT = "mlflow-operator"
OPERATOR_TOKEN_DURATION = "24h"
CHART = ROOT / "charts" / "mlflow-operator"

AUTH_ADMIN = "admin"
# The workspace server (MLflow workspaces, Kubernetes authorization): its data, its own
# ServiceAccount's kubeconfig, and the identities that use it. The operator's MLflow token is
# its ServiceAccount token; the sandbox user (`.sandbox/env`'s MLFLOW_TRACKING_TOKEN) may do
# anything in every workspace.
WORKSPACES_DIR = STATE / "mlflow"
WORKSPACE_SERVER_ACCOUNT = "mlflow-workspace-server"
SANDBOX_USER_ACCOUNT = "sandbox-user"
OPERATOR_TOKEN = STATE / "operator-token"
SANDBOX_USER_TOKEN = STATE / "mlflow-user-token"
WORKSPACE_SERVER_RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {server}, namespace: {namespace}}}
---
# What the Kubernetes workspace provider reads: namespaces (the workspaces) and the
# plugin's MLflowConfig objects (per-namespace artifact roots; the CRD is not installed, so
# none exist). The authorization plugin asks Kubernetes about each caller with the caller's
# own token (SelfSubjectAccessReview), which needs nothing here. No Secrets: the server never
# reads one.
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: sandbox-mlflow-workspace-server}}
rules:
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
- apiGroups: [mlflow.kubeflow.org]
  resources: [mlflowconfigs]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: sandbox-mlflow-workspace-server}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sandbox-mlflow-workspace-server}}
subjects: [{{kind: ServiceAccount, name: {server}, namespace: {namespace}}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {user}, namespace: {namespace}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {{name: sandbox-mlflow-user}}
rules:
- apiGroups: [mlflow.kubeflow.org]
  resources: ["*"]
  verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: sandbox-mlflow-user}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sandbox-mlflow-user}}
subjects: [{{kind: ServiceAccount, name: {user}, namespace: {namespace}}}]
"""
# The operator checks MLflow for drift at least this often in the sandbox (DESIGN: <= 15 s).
# SANDBOX_DRIFT_INTERVAL overrides it for benchmarks at the chart's default (60).
SANDBOX_DRIFT_INTERVAL_SECONDS = int(os.environ.get("SANDBOX_DRIFT_INTERVAL", "10"))
NODE_COUNT = int(os.environ.get("SANDBOX_NODES", "2"))
PORT_NAMES = (
    "etcd-client", "etcd-peer", "kube-apiserver", "kube-controller-manager",
    "kube-scheduler", "kwok", "mlflow", "mlflow-auth", "mlflow-open", "operator-health", "operator-metrics",
    # Allowlisted for tests that play a tracking server of their own (tests/e2e/test_tenancy.py).
    "test-server", "test-server-2",
    "kubelet", "kubelet-healthz",
    # The chart's operator and embedded MLflow server (`sandbox.py chart`), on the host network.
    "chart-mlflow", "chart-operator-health", "chart-operator-metrics",
    # The shared stores of the embedded server's scale-out mode (sandbox/stores.py).
    "postgres", "s3",
)
# Servers the sandbox's operator may call besides its default one.
ALLOWED_SERVER_PORTS = ("mlflow-open", "mlflow-auth", "test-server", "test-server-2")
# Components in start order; `down` stops them in reverse.
ORDER = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
    "containerd", "kubelet", "postgres", "s3", "mlflow-open", "mlflow-auth", "mlflow", "operator",
)
NODE_DIR = STATE / "node"
CONTAINERD_SOCKET = NODE_DIR / "containerd.sock"
MAX_UNIX_SOCKET_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
# `make sandbox-helm`: the chart installed as the sandbox's operator, its pods on the real node.
CHART_RELEASE = "sandbox"
CHART_NAMESPACE = "mlflow-system"
CHART_FULLNAME = "sandbox-mlflow-operator"
CHART_VALUES = STATE / "chart-values.yaml"
CHART_VOLUME = STATE / "volumes" / "mlflow"
CHART_STORAGE_CLASS = "sandbox-local"
# The images build-images.sh makes; the operator's tag is the chart's appVersion.
OPERATOR_IMAGE = ("ghcr.io/mlflow-operator/mlflow-operator", "0.1.0")
MLFLOW_IMAGE = ("localhost/sandbox/mlflow", "v3.17.2")
CRD_NAMES = (
    "experiments.mlflow.operator.dev",
    "trainingruns.mlflow.operator.dev",
    "registeredmodels.mlflow.operator.dev",
    "trainingsweeps.mlflow.operator.dev",
)


def ensure_ownership_key(directory: Path) -> None:
    """One random key, made once and kept with the sandbox's state (as the chart keeps its
    Secret across upgrades): ownership signed before a restart still verifies after it."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not any(directory.iterdir()):
        key = directory / "sandbox-1"
        key.write_text(os.urandom(32).hex())
        key.chmod(0o600)

class SandboxError(RuntimeError):
    """A component failed to start or become ready; the message says which and why."""


def log(message: str) -> None:
    print(f"[sandbox] {message}", flush=True)


# --------------------------------------------------------------------------- ports


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def load_ports() -> dict[str, int]:
    path = STATE / "ports.json"
    ports: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}
    taken = set(ports.values())
    for name in PORT_NAMES:
        if name not in ports:
            port = _free_port()
            while port in taken:
                port = _free_port()
            ports[name] = port
            taken.add(port)
    path.write_text(json.dumps(ports, indent=2) + "\n")
    return ports


# --------------------------------------------------------------------------- processes


def _pid_file(name: str) -> Path:
    return PIDS / f"{name}.pid"


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def running_pid(component: "Component") -> int | None:
    """The PID of the component if the process in its pid file is still the one we started."""
    path = _pid_file(component.name)
    if not path.exists():
        return None
    try:
        pid = int(path.read_text().strip())
    except ValueError:
        return None
    cmdline = _cmdline(pid)
    if not cmdline or component.marker not in " ".join(cmdline):
        return None
    try:
        status = Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].split()[0]
    except OSError:
        return None
    return None if status == "Z" else pid


def stop(component: "Component", timeout: float = 15.0) -> bool:
    """Stop the component's process group; returns whether anything was running."""
    pid = running_pid(component)
    path = _pid_file(component.name)
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and running_pid(component) is not None:
        time.sleep(0.1)
    if running_pid(component) is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return True


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --------------------------------------------------------------------------- probes


def _ssl_context(pki: Pki, client: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    if client:
        context.load_cert_chain(str(pki.client_cert(client)), str(pki.client_key(client)))
    return context


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ssl.SSLError):
        return False


def basic_auth_ok(url: str, username: str, password_file: Path) -> bool:
    """Probe an MLflow server that requires basic auth, with the sandbox's admin account."""
    import base64

    if not password_file.exists():
        return False
    token = base64.b64encode(f"{username}:{password_file.read_text().strip()}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def bearer_ok(url: str, token_file: Path, workspace: str) -> bool:
    """Probe a workspace server with a bearer token, in one workspace."""
    if not token_file.exists():
        return False
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token_file.read_text().strip()}",
                                                   "X-MLFLOW-WORKSPACE": workspace})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def insecure_https_ok(url: str) -> bool:
    """Probe a component's self-signed /healthz (controller-manager, scheduler)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return http_ok(url, context)


# --------------------------------------------------------------------------- components


@dataclass
class Component:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    # A string found in the process's command line: tells our process from a recycled PID.
    marker: str
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 60.0

    @property
    def log_path(self) -> Path:
        return LOGS / f"{self.name}.log"


class Sandbox:
    def __init__(self) -> None:
        for directory in (STATE, BIN, PIDS, LOGS):
            directory.mkdir(parents=True, exist_ok=True)
        self.ports = load_ports()
        self.pki = Pki(STATE / "pki")
        self.apiserver_url = f"https://127.0.0.1:{self.ports['kube-apiserver']}"
        self.mlflow_url = f"http://127.0.0.1:{self.ports['mlflow']}"
        self.postgres = stores.Postgres(STATE / "postgres", self.ports["postgres"])
        self.object_store = stores.ObjectStore(STATE / "s3", self.ports["s3"], BIN / "versitygw")
        self.components = {c.name: c for c in self._components()}
        # The processes this run started: their exit is known from the child itself, while
        # /proc/<pid>/cmdline reads empty for an instant while a wrapper (kubelet.sh, nsenter)
        # execs the next program, which running_pid() alone would take for an exit.
        self._started: dict[str, subprocess.Popen[bytes]] = {}

    # ---- configuration

    def _bin(self, name: str) -> str:
        path = BIN / name
        if not path.exists():
            raise SandboxError(
                f"{path} is missing: run `make binaries` (sandbox/build-binaries.sh) first"
            )
        return str(path)

    def _kubeconfig(self, stem: str) -> Path:
        return STATE / "pki" / f"{stem}.kubeconfig"

    def _components(self) -> list[Component]:
        p, pki = self.ports, self.pki
        apiserver_ctx = lambda: _ssl_context(pki, "admin")  # noqa: E731
        etcd_data = STATE / "etcd"
        open_dir = STATE / "mlflow-open"
        common_control_plane = ["--v=1"]
        return [
            Component(
                # PostgreSQL for the chart's shared-store mode, as the postgres user.
                name="postgres",
                argv=self.postgres.argv(),
                ready=self.postgres.ready,
                marker=str(self.postgres.data),
            ),
            Component(
                # The S3-compatible store of the chart's artifacts (versitygw over a directory).
                name="s3",
                argv=self.object_store.argv(),
                env=self.object_store.env(),
                ready=self.object_store.ready,
                marker=f"--port=127.0.0.1:{p['s3']}",
            ),
            Component(
                name="etcd",
                argv=[
                    str(BIN / "etcd"),
                    "--name=sandbox",
                    f"--data-dir={etcd_data}",
                    f"--listen-client-urls=http://127.0.0.1:{p['etcd-client']}",
                    f"--advertise-client-urls=http://127.0.0.1:{p['etcd-client']}",
                    f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{p['etcd-peer']}",
                    f"--initial-cluster=sandbox=http://127.0.0.1:{p['etcd-peer']}",
                    "--quota-backend-bytes=4294967296",
                    "--unsafe-no-fsync=true",
                    "--log-level=warn",
                ],
                ready=lambda: http_ok(f"http://127.0.0.1:{p['etcd-client']}/health"),
                marker=str(BIN / "etcd"),
            ),
            Component(
                name="kube-apiserver",
                argv=[
                    str(BIN / "kube-apiserver"),
                    f"--etcd-servers=http://127.0.0.1:{p['etcd-client']}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={p['kube-apiserver']}",
                    f"--tls-cert-file={pki.apiserver_cert}",
                    f"--tls-private-key-file={pki.apiserver_key}",
                    f"--client-ca-file={pki.ca_cert}",
                    f"--service-account-key-file={pki.sa_pub}",
                    f"--service-account-signing-key-file={pki.sa_key}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    "--service-cluster-ip-range=10.96.0.0/16",
                    "--authorization-mode=Node,RBAC",
                    "--enable-admission-plugins=NodeRestriction",
                    "--allow-privileged=true",
                    # The real node: reached by its name (localhost) with verified TLS, as the
                    # API server's own kubelet-client identity.
                    "--kubelet-preferred-address-types=Hostname",
                    f"--kubelet-client-certificate={pki.client_cert('apiserver-kubelet-client')}",
                    f"--kubelet-client-key={pki.client_key('apiserver-kubelet-client')}",
                    f"--kubelet-certificate-authority={pki.ca_cert}",
                    # The sandbox's own admission policy that sends real-node pods there.
                    "--feature-gates=MutatingAdmissionPolicy=true",
                    "--runtime-config=admissionregistration.k8s.io/v1beta1=true",
                    "--endpoint-reconciler-type=none",
                    "--profiling=false",
                    *common_control_plane,
                ],
                ready=lambda: http_ok(f"{self.apiserver_url}/readyz", apiserver_ctx()),
                marker=str(BIN / "kube-apiserver"),
            ),
            Component(
                name="kube-controller-manager",
                argv=[
                    str(BIN / "kube-controller-manager"),
                    f"--kubeconfig={self._kubeconfig('kube-controller-manager')}",
                    f"--authentication-kubeconfig={self._kubeconfig('kube-controller-manager')}",
                    f"--authorization-kubeconfig={self._kubeconfig('kube-controller-manager')}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={p['kube-controller-manager']}",
                    f"--service-account-private-key-file={pki.sa_key}",
                    f"--root-ca-file={pki.ca_cert}",
                    f"--cluster-signing-cert-file={pki.ca_cert}",
                    f"--cluster-signing-key-file={pki.ca_key}",
                    "--use-service-account-credentials=true",
                    "--controllers=*",
                    "--leader-elect=false",
                    "--profiling=false",
                    *common_control_plane,
                ],
                ready=lambda: insecure_https_ok(
                    f"https://127.0.0.1:{p['kube-controller-manager']}/healthz"
                ),
                marker=str(BIN / "kube-controller-manager"),
            ),
            Component(
                name="kube-scheduler",
                argv=[
                    str(BIN / "kube-scheduler"),
                    f"--kubeconfig={self._kubeconfig('kube-scheduler')}",
                    f"--authentication-kubeconfig={self._kubeconfig('kube-scheduler')}",
                    f"--authorization-kubeconfig={self._kubeconfig('kube-scheduler')}",
                    "--bind-address=127.0.0.1",
                    f"--secure-port={p['kube-scheduler']}",
                    "--leader-elect=false",
                    "--profiling=false",
                    *common_control_plane,
                ],
                ready=lambda: insecure_https_ok(f"https://127.0.0.1:{p['kube-scheduler']}/healthz"),
                marker=str(BIN / "kube-scheduler"),
            ),
            Component(
                name="kwok",
                argv=[
                    str(BIN / "kwok"),
                    f"--kubeconfig={self._kubeconfig('kwok')}",
                    f"--config={ROOT / 'sandbox' / 'kwok' / 'stages.yaml'}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    "--node-lease-duration-seconds=40",
                    "--cidr=10.244.0.1/16",
                    "--node-ip=10.240.0.1",
                    f"--server-address=127.0.0.1:{p['kwok']}",
                ],
                ready=lambda: http_ok(f"http://127.0.0.1:{p['kwok']}/healthz"),
                marker=str(BIN / "kwok"),
            ),
            Component(
                name="containerd",
                argv=[
                    "unshare", "--mount", "--propagation", "private", "--",
                    str(ROOT / "sandbox" / "node" / "node-namespace.sh"), str(NODE_DIR),
                    "containerd", f"--config={NODE_DIR / 'containerd.toml'}",
                ],
                ready=lambda: self.ctr("version", check=False).returncode == 0,
                marker=f"--config={NODE_DIR / 'containerd.toml'}",
            ),
            Component(
                name="kubelet",
                argv=[
                    str(ROOT / "sandbox" / "node" / "kubelet.sh"), str(_pid_file("containerd")),
                    str(BIN / "kubelet"),
                    f"--config={NODE_DIR / 'kubelet.yaml'}",
                    f"--kubeconfig={self._kubeconfig('kubelet')}",
                    f"--hostname-override={node.NODE_NAME}",
                    f"--root-dir={NODE_DIR / 'kubelet'}",
                    f"--node-labels={node.REAL_NODE_LABEL}=true",
                    "--v=1",
                ],
                ready=lambda: http_ok(f"http://127.0.0.1:{p['kubelet-healthz']}/healthz"),
                marker=f"--config={NODE_DIR / 'kubelet.yaml'}",
            ),
            Component(
                # A server without workspaces or authentication, where the tag rules (signed
                # ownership tags, name prefixes) are what keeps namespaces apart.
                name="mlflow-open",
                argv=[
                    str(VENV / "bin" / "mlflow"),
                    "server",
                    f"--backend-store-uri=sqlite:///{open_dir / 'mlflow.db'}",
                    f"--artifacts-destination={open_dir / 'artifacts'}",
                    "--serve-artifacts",
                    "--host=127.0.0.1",
                    f"--port={p['mlflow-open']}",
                    "--workers=1",
                ],
                env={
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    "MLFLOW_DISABLE_TELEMETRY": "true",
                },
                # /health is exempt from MLflow's checks, so probe a real API path.
                ready=lambda: http_ok(
                    f"http://127.0.0.1:{p['mlflow-open']}/api/2.0/mlflow/experiments/search?max_results=1"
                ),
                marker=f"--port={p['mlflow-open']}",
                ready_timeout=120.0,
            ),
            Component(
                # A second server that requires basic auth, so that credentials from Secrets are
                # tested against a server that checks them.
                name="mlflow-auth",
                argv=[
                    str(VENV / "bin" / "mlflow"),
                    "server",
                    "--app-name=basic-auth",
                    f"--backend-store-uri=sqlite:///{STATE / 'mlflow-auth' / 'mlflow.db'}",
                    f"--artifacts-destination={STATE / 'mlflow-auth' / 'artifacts'}",
                    "--serve-artifacts",
                    "--host=127.0.0.1",
                    f"--port={p['mlflow-auth']}",
                    "--workers=1",
                ],
                env={
                    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                    "MLFLOW_DISABLE_TELEMETRY": "true",
                    "MLFLOW_AUTH_CONFIG_PATH": str(STATE / "mlflow-auth" / "basic_auth.ini"),
                },
                ready=lambda: basic_auth_ok(
                    f"http://127.0.0.1:{p['mlflow-auth']}/api/2.0/mlflow/experiments/search?max_results=1",
                    AUTH_ADMIN, STATE / "mlflow-auth" / "admin-password",
                ),
                marker=f"--port={p['mlflow-auth']}",
                ready_timeout=120.0,
            ),
            Component(
                # The workspace server: MLflow workspaces as Kubernetes namespaces, every request
                # authorized by Kubernetes RBAC (mlflow-kubernetes-plugins), run from the chart's
                # server image (its Python 3.13) by sandbox/mlflow/chroot-server.sh.
                name="mlflow",
                argv=[
                    str(ROOT / "sandbox" / "mlflow" / "chroot-server.sh"),
                    str(NODE_DIR / "mlflow-rootfs"), str(WORKSPACES_DIR / "data"), str(WORKSPACES_DIR / "kubeconfig"),
                    "--",
                    "--backend-store-uri=sqlite:////var/lib/mlflow/mlflow.db",
                    "--artifacts-destination=/var/lib/mlflow/artifacts",
                    "--serve-artifacts",
                    "--enable-workspaces",
                    "--workspace-store-uri=kubernetes://",
                    "--app-name=kubernetes-auth",
                    "--host=127.0.0.1",
                    f"--port={p['mlflow']}",
                    "--workers=1",
                ],
                ready=lambda: bearer_ok(
                    f"http://127.0.0.1:{p['mlflow']}/api/2.0/mlflow/experiments/search?max_results=1",
                    SANDBOX_USER_TOKEN, workspace="default",
                ),
                marker=f"--port={p['mlflow']}",
                ready_timeout=180.0,
            ),
            Component(
                name="operator",
                argv=[
                    str(OPERATOR_VENV / "bin" / "mlflow-operator"),
                    "run",
                    "--all-namespaces",
                    f"--tracking-uri={self.mlflow_url}",
                    *(f"--allowed-tracking-server=http://127.0.0.1:{p[name]}" for name in ALLOWED_SERVER_PORTS),
                    f"--workspace-tracking-server={self.mlflow_url}",
                    # The chart's embedded server, when `sandbox.py chart` runs one (benchmarks
                    # dispatch against it on shared stores with the local operator).
                    f"--workspace-tracking-server=http://127.0.0.1:{p['chart-mlflow']}",
                    f"--workspace-token-file={OPERATOR_TOKEN}",
                    f"--drift-interval={SANDBOX_DRIFT_INTERVAL_SECONDS}",
                    f"--ownership-keys={OWNERSHIP_KEYS}",
                    f"--health-port={p['operator-health']}",
                    f"--metrics-port={p['operator-metrics']}",
                    "--bind-address=127.0.0.1",
                ],
                # As in the image (Dockerfile).
                env={"KUBECONFIG": str(OPERATOR_KUBECONFIG), "MALLOC_ARENA_MAX": "2"},
                ready=lambda: http_ok(f"http://127.0.0.1:{p['operator-health']}/healthz"),
                marker=f"--health-port={p['operator-health']}",
            ),
        ]

    # ---- lifecycle

    def prepare(self) -> None:
        ensure_pki(self.pki)
        ensure_ownership_key(OWNERSHIP_KEYS)
        write_kubeconfig(KUBECONFIG, self.apiserver_url, self.pki, "admin", "sandbox-admin")
        for stem, user in (
            ("kube-controller-manager", "system:kube-controller-manager"),
            ("kube-scheduler", "system:kube-scheduler"),
            ("kwok", "kwok-controller"),
            ("kubelet", f"system:node:{node.NODE_NAME}"),
        ):
            write_kubeconfig(self._kubeconfig(stem), self.apiserver_url, self.pki, stem, user)
        (STATE / "mlflow-open" / "artifacts").mkdir(parents=True, exist_ok=True)
        self.prepare_node()
        try:
            self.postgres.prepare()
            self.object_store.prepare()
        except stores.StoreError as error:
            raise SandboxError(str(error)) from error
        self.prepare_auth_server()
        self.write_env()

    def prepare_node(self) -> None:
        """Configuration of the real node's containerd and kubelet, under .sandbox/node."""
        # The kubelet's longest Unix socket: pod-resources/<10 digits>. Linux caps a socket
        # path at 107 bytes; past it the kubelet exits at start with "bind: invalid argument".
        longest_socket = NODE_DIR / "kubelet" / "pod-resources" / ("0" * 10)
        if len(os.fsencode(longest_socket)) > MAX_UNIX_SOCKET_PATH:
            raise SystemExit(
                f"SANDBOX_DIR {STATE} is too long for the node's Unix sockets "
                f"({len(os.fsencode(longest_socket))} > {MAX_UNIX_SOCKET_PATH} bytes in {longest_socket}); "
                "choose a shorter directory")
        (NODE_DIR / "cni").mkdir(parents=True, exist_ok=True)
        (NODE_DIR / "containerd.toml").write_text(node.containerd_config(NODE_DIR, CONTAINERD_SOCKET))
        (NODE_DIR / "cni" / "10-loopback.conflist").write_text(node.CNI_LOOPBACK)
        # Pods resolve names only through 127.0.0.1: nothing is sent to another resolver.
        (NODE_DIR / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        cgroup_file = NODE_DIR / "cgroup-root"
        if running_pid(self.components["kubelet"]) is None:
            # One per sandbox directory: two sandboxes never share (or remove) each other's.
            suffix = hashlib.sha256(str(STATE).encode()).hexdigest()[:8]
            cgroup_file.write_text(f"{node.own_cgroup().rstrip('/')}/mlflow-sandbox-node-{suffix}\n")
        (NODE_DIR / "kubelet.yaml").write_text(node.kubelet_config(
            NODE_DIR, self.pki.root, CONTAINERD_SOCKET, self.ports["kubelet"], self.ports["kubelet-healthz"],
            cgroup_file.read_text().strip(),
        ))

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", f"--address={CONTAINERD_SOCKET}", "--namespace=k8s.io", *args],
                              capture_output=True, text=True, timeout=600, check=check)

    def ensure_images(self) -> None:
        """Build (or take from the cache) the node's images and import them into containerd."""
        result = subprocess.run([str(ROOT / "sandbox" / "node" / "build-images.sh")], capture_output=True,
                                text=True, timeout=1800, env={**os.environ, "SANDBOX_DIR": str(STATE)})
        if result.returncode != 0:
            raise SandboxError(f"building the real node's images failed (sandbox/node/build-images.sh):\n"
                               f"{result.stderr.strip()}")
        node.import_images(["ctr", f"--address={CONTAINERD_SOCKET}", "--namespace=k8s.io"],
                           result.stdout.split())

    def ensure_real_node(self) -> None:
        """The node Ready, and the admission policy that sends real-node namespaces' pods there."""
        self.kubectl("wait", "--for=condition=Ready", f"node/{node.NODE_NAME}", "--timeout=90s")
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=sandbox", "-f", "-",
                     input_text=node.REAL_NODE_POLICY + "---\n" + node.SHARED_PORT_POLICY)

    def stop_node_leftovers(self) -> None:
        """Containers, shims and cgroups that outlive a stopped containerd and kubelet."""
        if node.stop_shims(CONTAINERD_SOCKET):
            log("stopped containerd's shims")
        cgroup_file = NODE_DIR / "cgroup-root"
        if cgroup_file.exists():
            node.remove_cgroup_root(cgroup_file.read_text().strip(), NODE_DIR / "cgroups-created")

    def prepare_auth_server(self) -> None:
        """Admin password and CSRF key made once per sandbox; the auth database in .sandbox."""
        import secrets

        auth = STATE / "mlflow-auth"
        (auth / "artifacts").mkdir(parents=True, exist_ok=True)
        for name in ("admin-password", "csrf-key"):
            path = auth / name
            if not path.exists():
                path.write_text(secrets.token_urlsafe(18) + "\n")
                path.chmod(0o600)
        (auth / "basic_auth.ini").write_text(
            "[mlflow]\n"
            "default_permission = READ\n"
            f"database_uri = sqlite:///{auth / 'basic_auth.db'}\n"
            f"admin_username = {AUTH_ADMIN}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        component = self.components["mlflow-auth"]
        component.env["MLFLOW_AUTH_ADMIN_PASSWORD"] = (auth / "admin-password").read_text().strip()
        component.env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = (auth / "csrf-key").read_text().strip()

    def write_env(self) -> None:
        (STATE / "env").write_text(
            f"export KUBECONFIG={KUBECONFIG}\n"
            f"export MLFLOW_TRACKING_URI={self.mlflow_url}\n"
            "# A bearer token allowed in every workspace; name the workspace with MLFLOW_WORKSPACE (the\n"
            "# mlflow client) or the X-MLFLOW-WORKSPACE header (curl).\n"
            f"export MLFLOW_TRACKING_TOKEN=$(cat {SANDBOX_USER_TOKEN} 2>/dev/null)\n"
            "# The server without workspaces (tag rules keep namespaces apart there).\n"
            f"export MLFLOW_OPEN_TRACKING_URI=http://127.0.0.1:{self.ports['mlflow-open']}\n"
            f"export KUBECACHEDIR={STATE / 'kube-cache'}\n"
            f"export PATH={BIN}:$PATH\n"
        )

    def start(self, name: str) -> bool:
        """Start the component unless it is running; returns whether it was started."""
        component = self.components[name]
        if running_pid(component) is not None:
            return False
        executable = Path(shutil.which(component.argv[0]) or component.argv[0])
        if not executable.exists():
            hint = (
                "make venv" if VENV in executable.parents
                else "make operator-venv" if OPERATOR_VENV in executable.parents
                else "make binaries"
            )
            raise SandboxError(f"{name}: {executable} is missing: run `{hint}` first")
        port = self._own_port(name)
        if port is not None and _port_in_use(port):
            raise SandboxError(
                f"{name}: port {port} is taken by a process this sandbox did not start; "
                f"stop it or delete {STATE / 'ports.json'} to pick new ports"
            )
        env = {**os.environ, **component.env}
        with component.log_path.open("ab") as log_file:
            log_file.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {name}\n".encode())
            log_file.flush()
            process = subprocess.Popen(
                component.argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=STATE,
                env=env,
                start_new_session=True,
            )
        _pid_file(name).write_text(f"{process.pid}\n")
        self._started[name] = process
        # Until the child has exec'd, /proc shows our own command line; wait for the switch so
        # that running_pid() cannot mistake a starting process for a dead one.
        deadline = time.monotonic() + 10
        while process.poll() is None and time.monotonic() < deadline:
            if component.marker in " ".join(_cmdline(process.pid)):
                break
            time.sleep(0.01)
        return True

    def _own_port(self, name: str) -> int | None:
        return {
            "etcd": self.ports["etcd-client"],
            "kube-apiserver": self.ports["kube-apiserver"],
            "kube-controller-manager": self.ports["kube-controller-manager"],
            "kube-scheduler": self.ports["kube-scheduler"],
            "kwok": self.ports["kwok"],
            "kubelet": self.ports["kubelet-healthz"],
            "mlflow": self.ports["mlflow"],
            "mlflow-auth": self.ports["mlflow-auth"],
            "mlflow-open": self.ports["mlflow-open"],
            "operator": self.ports["operator-health"],
            "postgres": self.ports["postgres"],
            "s3": self.ports["s3"],
        }.get(name)

    def _exited(self, name: str) -> bool:
        process = self._started.get(name)
        if process is not None:
            return process.poll() is not None
        return running_pid(self.components[name]) is None

    def wait_ready(self, name: str, attempts: int = 3) -> None:
        """Wait for the component's health check. A component that exits while starting is
        started again (kube-apiserver can lose a start-up race against a fresh etcd), at most
        `attempts` times in all, and each exit is reported."""
        component = self.components[name]
        deadline = time.monotonic() + component.ready_timeout
        attempt = 1
        while time.monotonic() < deadline:
            if component.ready():
                return
            if self._exited(name):
                if attempt >= attempts:
                    raise SandboxError(
                        f"{name} exited during start-up {attempt} times; last lines of {component.log_path}:\n"
                        f"{tail(component.log_path)}"
                    )
                log(f"{name} exited during start-up (attempt {attempt}/{attempts}); last lines of its log:\n"
                    f"{tail(component.log_path, 5)}\n[sandbox] starting {name} again")
                attempt += 1
                self.start(name)
            time.sleep(0.2)
        raise SandboxError(
            f"{name} was not ready within {component.ready_timeout:.0f}s; "
            f"last lines of {component.log_path}:\n{tail(component.log_path)}"
        )

    def kubectl(self, *args: str, input_text: str | None = None) -> str:
        result = subprocess.run(
            [self._bin("kubectl"), f"--kubeconfig={KUBECONFIG}", f"--cache-dir={STATE / 'kube-cache'}", *args],
            input=input_text, capture_output=True, text=True, timeout=120,
        )
        if result.returncode != 0:
            raise SandboxError(f"kubectl {' '.join(args)} failed:\n{result.stderr.strip()}")
        return result.stdout

    def ensure_nodes(self) -> None:
        documents = [NODE_TEMPLATE.format(name=f"kwok-node-{i}") for i in range(NODE_COUNT)]
        self.kubectl("apply", "--server-side", "--field-manager=sandbox", "-f", "-",
                     input_text="---\n".join(documents))
        self.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")

    def ensure_crds(self) -> None:
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=sandbox",
                     "-f", str(ROOT / "crds"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     *[f"crd/{name}" for name in CRD_NAMES])
        # kubectl cached discovery before the CRDs existed, and does not refresh it to expand
        # a category ("the server doesn't have a resource type mlflow"): drop the cache.
        shutil.rmtree(STATE / "kube-cache" / "discovery", ignore_errors=True)

    def ensure_admission_policies(self) -> None:
        """The chart's admission policies, as its default install has them (Pod Security
        baseline for training templates, experiment-name prefixes), under a release name of
        their own so that installing the chart later adds its copy beside them."""
        rendered = subprocess.run(
            [self._bin("helm"), "template", "sandbox-policies", str(CHART), "--kube-version", "1.34.0",
             "--show-only", "templates/admissionpolicy.yaml"],
            capture_output=True, text=True, timeout=60,
        )
        if rendered.returncode != 0:
            raise SandboxError(f"helm template of the chart's admission policies failed:\n{rendered.stderr}")
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=sandbox", "-f", "-",
                     input_text=rendered.stdout)

    def ensure_operator_identity(self) -> None:
        """The chart's ServiceAccount and RBAC (cluster scope), and a kubeconfig with a fresh
        token for it, for the operator process to use."""
        self.kubectl("apply", "--server-side", "--field-manager=sandbox", "-f", "-",
                     input_text=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {OPERATOR_NAMESPACE}\n")
        rendered = subprocess.run(
            [self._bin("helm"), "template", OPERATOR_SERVICE_ACCOUNT, str(CHART), "--kube-version", "1.34.0",
             "--namespace", OPERATOR_NAMESPACE, "--set", "mlflow.enabled=false",
             "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
            capture_output=True, text=True, timeout=60,
        )
        if rendered.returncode != 0:
            raise SandboxError(f"helm template of the chart's RBAC failed:\n{rendered.stderr}")
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=sandbox", "-f", "-",
                     input_text=rendered.stdout)
        token = self.kubectl("create", "token", OPERATOR_SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE,
                             f"--duration={OPERATOR_TOKEN_DURATION}").strip()
        OPERATOR_KUBECONFIG.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: sandbox
  cluster:
    server: {self.apiserver_url}
    certificate-authority: {self.pki.ca_cert}
users:
- name: {OPERATOR_SERVICE_ACCOUNT}
  user:
    token: {token}
contexts:
- name: sandbox
  context:
    cluster: sandbox
    user: {OPERATOR_SERVICE_ACCOUNT}
    namespace: {OPERATOR_NAMESPACE}
current-context: sandbox
"""
        )
        OPERATOR_KUBECONFIG.chmod(0o600)
        OPERATOR_TOKEN.write_text(token + "\n")
        OPERATOR_TOKEN.chmod(0o600)

    def ensure_workspace_server_identity(self) -> None:
        """The workspace server's ServiceAccount and RBAC, a kubeconfig with a fresh token for
        it (readable by the server's non-root user only), and the sandbox user's token."""
        self.kubectl("apply", "--server-side", "--field-manager=sandbox", "-f", "-",
                     input_text=f"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {OPERATOR_NAMESPACE}\n")
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=sandbox", "-f", "-",
                     input_text=WORKSPACE_SERVER_RBAC.format(server=WORKSPACE_SERVER_ACCOUNT, user=SANDBOX_USER_ACCOUNT,
                                                             namespace=OPERATOR_NAMESPACE))
        (WORKSPACES_DIR / "data" / "artifacts").mkdir(parents=True, exist_ok=True)
        for path in (WORKSPACES_DIR / "data", WORKSPACES_DIR / "data" / "artifacts"):
            os.chown(path, 10001, 10001)
        token = self.kubectl("create", "token", WORKSPACE_SERVER_ACCOUNT, "-n", OPERATOR_NAMESPACE,
                             f"--duration={OPERATOR_TOKEN_DURATION}").strip()
        ca = base64.b64encode(self.pki.ca_cert.read_bytes()).decode()
        kubeconfig = WORKSPACES_DIR / "kubeconfig"
        kubeconfig.write_text(f"""apiVersion: v1
kind: Config
clusters:
- name: sandbox
  cluster:
    server: {self.apiserver_url}
    certificate-authority-data: {ca}
users:
- name: {WORKSPACE_SERVER_ACCOUNT}
  user:
    token: {token}
contexts:
- name: sandbox
  context: {{cluster: sandbox, user: {WORKSPACE_SERVER_ACCOUNT}, namespace: {OPERATOR_NAMESPACE}}}
current-context: sandbox
""")
        os.chown(kubeconfig, 10001, 10001)
        kubeconfig.chmod(0o600)
        user_token = self.kubectl("create", "token", SANDBOX_USER_ACCOUNT, "-n", OPERATOR_NAMESPACE,
                                  f"--duration={OPERATOR_TOKEN_DURATION}").strip()
        SANDBOX_USER_TOKEN.write_text(user_token + "\n")
        SANDBOX_USER_TOKEN.chmod(0o600)

    def ensure_default_service_account(self) -> None:
        """Pods need the namespace's `default` ServiceAccount, which a controller creates."""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.kubectl("get", "serviceaccount", "default", "-n", "default")
                return
            except SandboxError:
                time.sleep(0.3)
        raise SandboxError("the default ServiceAccount never appeared: is kube-controller-manager healthy?")

    def up(self) -> None:
        began = time.monotonic()
        self.prepare()

        started: set[str] = set()

        def bring_up(*names: str) -> None:
            started.update(name for name in names if self.start(name))
            for name in names:
                t0 = time.monotonic()
                self.wait_ready(name)
                if name in started:
                    log(f"{name} ready ({time.monotonic() - began:.1f}s since start, {time.monotonic() - t0:.1f}s waiting)")
                else:
                    log(f"{name} already running")

        # MLflow does not depend on the cluster: start it first so its slow start overlaps.
        for server in ("mlflow-open", "mlflow-auth"):
            if self.start(server):
                started.add(server)
        bring_up("postgres", "s3")
        self.postgres.ensure_mlflow_role()
        self.object_store.ensure_bucket()
        bring_up("etcd")
        bring_up("kube-apiserver")
        bring_up("kube-controller-manager", "kube-scheduler", "kwok")
        if running_pid(self.components["containerd"]) is None:
            self.stop_node_leftovers()
            node.prepare_cgroup_root((NODE_DIR / "cgroup-root").read_text().strip(), NODE_DIR / "cgroups-created")
        bring_up("containerd")
        self.ensure_images()
        bring_up("kubelet")
        self.ensure_crds()
        self.ensure_admission_policies()
        self.ensure_nodes()
        self.ensure_default_service_account()
        self.ensure_real_node()
        bring_up("mlflow-open", "mlflow-auth")
        if running_pid(self.components["mlflow"]) is None:
            self.ensure_workspace_server_identity()
        bring_up("mlflow")
        if running_pid(self.components["operator"]) is None:
            self.stop_chart_operator()
            self.ensure_operator_identity()
        bring_up("operator")
        log(f"sandbox ready in {time.monotonic() - began:.1f}s")
        log(f"source {STATE / 'env'}")

    # ---- the chart as the sandbox's operator

    def chart_values(self) -> dict:
        """Values for the sandbox's install: the local images, everything on 127.0.0.1."""
        p = self.ports
        return {
            "image": {"repository": OPERATOR_IMAGE[0], "tag": OPERATOR_IMAGE[1], "pullPolicy": "Never"},
            # No Service proxy here: the pods reach the API server on the host's loopback.
            "kubernetesApi": {"host": "127.0.0.1", "port": p["kube-apiserver"]},
            "bindAddress": "127.0.0.1",
            "health": {"port": p["chart-operator-health"]},
            "metrics": {"port": p["chart-operator-metrics"], "service": {"port": p["chart-operator-metrics"]}},
            "driftInterval": SANDBOX_DRIFT_INTERVAL_SECONDS,
            "tracking": {
                "uri": f"http://127.0.0.1:{p['chart-mlflow']}",
                "allowedServers": [f"http://127.0.0.1:{p[name]}" for name in ALLOWED_SERVER_PORTS],
                # The embedded server as the operator's pod reaches it (host network).
                "workspaceServers": [f"http://127.0.0.1:{p['chart-mlflow']}"],
            },
            "mlflow": {
                "image": {"repository": MLFLOW_IMAGE[0], "tag": MLFLOW_IMAGE[1], "pullPolicy": "Never"},
                "port": p["chart-mlflow"],
                "bindAddress": "127.0.0.1",
                "persistence": {"storageClass": CHART_STORAGE_CLASS, "size": "1Gi"},
            },
        }

    def shared_store_values(self, name: str) -> dict:
        """The database `name` and the bucket `name` (made if missing) as the embedded server's
        stores, their secrets in two Secrets of the release namespace, 2 workers.

        One replica, replaced rather than rolled: the sandbox's pods share the host network, where
        a second server (a surge pod or another replica) cannot bind the port (README "Not done
        yet")."""
        if not re.fullmatch(r"[a-z][a-z0-9-]{2,40}", name):
            raise SandboxError(f"--shared-stores {name!r}: 3-41 lowercase letters, digits and '-', "
                               "starting with a letter (a bucket and a database name)")
        database = name.replace("-", "_")
        exists = self.postgres.sql(f"SELECT 1 FROM pg_database WHERE datname = '{database}'").strip()
        if not exists:
            self.postgres.sql(f"CREATE DATABASE {database} OWNER {stores.MLFLOW_ROLE}")
        self.object_store.ensure_bucket(name)
        secrets = {
            "sandbox-mlflow-database": {"uri": self.postgres.uri(database)},
            "sandbox-mlflow-s3": {"AWS_ACCESS_KEY_ID": stores.S3_ACCESS_KEY,
                                  "AWS_SECRET_ACCESS_KEY": self.object_store.secret_key},
        }
        for secret, data in secrets.items():
            encoded = {key: base64.b64encode(value.encode()).decode() for key, value in data.items()}
            self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=sandbox", "-f", "-",
                         input_text=json.dumps({"apiVersion": "v1", "kind": "Secret",
                                                "metadata": {"name": secret, "namespace": CHART_NAMESPACE},
                                                "data": encoded}))
        return {
            "replicas": 2,
            "workers": 2,
            "backendStore": {"type": "external",
                             "uriFrom": {"secretKeyRef": {"name": "sandbox-mlflow-database", "key": "uri"}}},
            "artifacts": {"type": "s3", "s3": {
                "bucket": name, "prefix": "artifacts", "endpointUrl": self.object_store.endpoint,
                "credentialsSecret": {"name": "sandbox-mlflow-s3"}}},
        }

    def ensure_chart_volume(self) -> None:
        """A StorageClass without a provisioner and one hostPath volume under .sandbox for the
        embedded server's PVC, owned by the chart's non-root user (hostPath ignores fsGroup)."""
        CHART_VOLUME.mkdir(parents=True, exist_ok=True)
        os.chown(CHART_VOLUME, 10001, 10001)
        claim = f"{CHART_FULLNAME}-mlflow"
        self.kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=sandbox", "-f", "-", input_text=f"""
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: {CHART_STORAGE_CLASS}
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
reclaimPolicy: Retain
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: sandbox-mlflow-data
spec:
  storageClassName: {CHART_STORAGE_CLASS}
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  claimRef: {{namespace: {CHART_NAMESPACE}, name: {claim}}}
  hostPath: {{path: {CHART_VOLUME}, type: Directory}}
""")
        # A claim deleted and made again: the volume (and its data) goes to the new one.
        phase = self.kubectl("get", "pv", "sandbox-mlflow-data", "-o", "jsonpath={.status.phase}").strip()
        if phase == "Released":
            self.kubectl("patch", "pv", "sandbox-mlflow-data", "--type=json",
                         "-p", '[{"op": "remove", "path": "/spec/claimRef/uid"},'
                               ' {"op": "remove", "path": "/spec/claimRef/resourceVersion"}]')

    def helm(self, *args: str, timeout: float = 600) -> str:
        env = {**os.environ, "HELM_CACHE_HOME": str(STATE / "helm" / "cache"),
               "HELM_CONFIG_HOME": str(STATE / "helm" / "config"), "HELM_DATA_HOME": str(STATE / "helm" / "data")}
        result = subprocess.run([self._bin("helm"), f"--kubeconfig={KUBECONFIG}", *args],
                                capture_output=True, text=True, timeout=timeout, env=env)
        if result.returncode != 0:
            raise SandboxError(f"helm {' '.join(args)} failed:\n{result.stderr.strip()}")
        return result.stdout

    def install_chart(self, extra_values: list[str], shared_stores: str | None = None) -> None:
        """Install or upgrade the chart in mlflow-system and make its Deployment the sandbox's
        operator: the local operator process stops (`up` switches back). With `shared_stores`
        (a name) the embedded server keeps its data in that PostgreSQL database and S3 bucket
        of the sandbox and runs 2 workers."""
        began = time.monotonic()
        if stop(self.components["operator"]):
            log("stopped the local operator: the chart's Deployment takes over")
        # Pods of this namespace run on the real node (host network, probes on 127.0.0.1).
        self.kubectl("apply", "--server-side", "--field-manager=sandbox", "-f", "-", input_text=f"""
apiVersion: v1
kind: Namespace
metadata:
  name: {CHART_NAMESPACE}
  labels: {{"{node.REAL_NODE_LABEL}": "true"}}
""")
        self.ensure_chart_volume()
        values = self.chart_values()
        if shared_stores:
            values["mlflow"].update(self.shared_store_values(shared_stores))
        CHART_VALUES.write_text(json.dumps(values, indent=2) + "\n")
        set_args = [arg for value in extra_values for arg in ("--set", value)]
        self.helm("upgrade", "--install", CHART_RELEASE, str(CHART), "--namespace", CHART_NAMESPACE,
                  "--values", str(CHART_VALUES), *set_args, "--wait", "--timeout=5m")
        log(f"chart release {CHART_RELEASE} ready in namespace {CHART_NAMESPACE} "
            f"({time.monotonic() - began:.1f}s); values in {CHART_VALUES}")
        log(f"kubectl get pods -n {CHART_NAMESPACE} -o wide")

    def stop_chart_operator(self) -> None:
        """Scale the chart's operator Deployment (if installed) to zero, so that the local
        operator is the only one."""
        replicas = subprocess.run(
            [self._bin("kubectl"), f"--kubeconfig={KUBECONFIG}", "get", "deployment", CHART_FULLNAME,
             "-n", CHART_NAMESPACE, "-o", "jsonpath={.spec.replicas}", "--ignore-not-found"],
            capture_output=True, text=True, timeout=60,
        ).stdout.strip()
        if replicas and replicas != "0":
            self.kubectl("scale", "deployment", CHART_FULLNAME, "-n", CHART_NAMESPACE, "--replicas=0")
            self.kubectl("wait", "--for=delete", "pod", "-n", CHART_NAMESPACE, "--timeout=90s",
                         "-l", f"app.kubernetes.io/instance={CHART_RELEASE},app.kubernetes.io/component=operator")
            log("scaled the chart's operator to 0: the local operator takes over")

    def down(self) -> None:
        for name in reversed(ORDER):
            if stop(self.components[name]):
                log(f"stopped {name}")
            if name == "containerd":
                self.stop_node_leftovers()

    def status(self) -> int:
        code = 0
        for name in ORDER:
            component = self.components[name]
            pid = running_pid(component)
            healthy = pid is not None and component.ready()
            state = "ready" if healthy else ("starting/unhealthy" if pid else "stopped")
            code = code if healthy else 1
            print(f"{name:<24} {state:<20} pid={pid or '-'}  log={component.log_path}")
        return code


NODE_TEMPLATE = """apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
    kwok.x-k8s.io/node: fake
  labels:
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: ""
    type: kwok
spec: {{}}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up")
    sub.add_parser("down")
    sub.add_parser("status")
    restart = sub.add_parser("restart")
    restart.add_argument("components", nargs="+", choices=ORDER)
    chart = sub.add_parser("chart", help="install or upgrade the chart as the sandbox's operator")
    chart.add_argument("--set", action="append", default=[], dest="values", help="an extra helm --set value")
    chart.add_argument("--shared-stores", metavar="NAME", default=None,
                       help="keep the embedded server's data in the sandbox's PostgreSQL database and S3 "
                            "bucket NAME (made if missing), with 2 workers")
    stop_parser = sub.add_parser("stop")
    stop_parser.add_argument("components", nargs="+", choices=ORDER)
    args = parser.parse_args(argv)

    try:
        return run_command(Sandbox(), args)
    except SandboxError as error:
        print(f"[sandbox] ERROR: {error}", file=sys.stderr, flush=True)
        return 1


def run_command(sandbox: Sandbox, args: argparse.Namespace) -> int:
    match args.command:
        case "up":
            sandbox.up()
        case "down":
            sandbox.down()
        case "status":
            return sandbox.status()
        case "chart":
            sandbox.install_chart(args.values, args.shared_stores)
        case "stop":
            for name in args.components:
                if stop(sandbox.components[name]):
                    log(f"stopped {name}")
        case "restart":
            for name in args.components:
                stop(sandbox.components[name])
            sandbox.up()
    return 0


if __name__ == "__main__":
    sys.exit(main())
