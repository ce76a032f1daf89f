"""Where test_chart_install.py installs the chart: the sandbox, or any cluster KUBECONFIG names.

The tests are the same for both; what differs is how the chart is installed and how the test
process reaches the pods:

- `SandboxTarget` (make test): `sandbox.py chart`, the values `make sandbox-helm` uses, every
  pod on the real node's host network, so MLflow and /metrics are on 127.0.0.1.
- `ClusterTarget` (make test-cluster): plain `helm upgrade --install` with the chart's defaults,
  the images named by OPERATOR_IMAGE / MLFLOW_IMAGE and an optional values file, the embedded
  server reached in-cluster by its Service name and from the test process through
  `kubectl port-forward`. Nothing sandbox-specific: no host network, no node name, no files
  of the node read from the host.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlflow-operator"
TRAINING_IMAGE = "mlflow-operator-examples/churn-train:0.1.0"
REAL_NODE_LABEL = "sandbox.mlflow.operator.dev/real-node"


def cluster_mode() -> bool:
    """`make test-cluster` sets this; a KUBECONFIG in the environment alone never redirects tests."""
    return os.environ.get("MLFLOW_OPERATOR_E2E_TARGET") == "cluster"


class ChartTarget(ABC):
    release: str
    namespace: str
    mlflow_port: int
    node_name: str | None  # where the pods must run, when the target knows it
    namespace_labels: dict[str, str]

    def __init__(self, kubeconfig: Path, helm_bin: str, kubectl_bin: str, helm_env: dict[str, str]) -> None:
        self.kubeconfig, self.helm_bin, self.kubectl_bin, self.helm_env = kubeconfig, helm_bin, kubectl_bin, helm_env

    @property
    def fullname(self) -> str:
        """As the chart's fullname helper names the release's objects."""
        name = self.release if "mlflow-operator" in self.release else f"{self.release}-mlflow-operator"
        return name[:63].rstrip("-")

    @property
    def instance(self) -> str:
        return f"app.kubernetes.io/instance={self.release}"

    @abstractmethod
    def install(self, *set_values: str) -> None:
        """Install or upgrade, with the target's base values plus `set_values` (key=value)."""

    @abstractmethod
    def tracking_uri(self) -> str:
        """The chart's default server as objects see it (their status.trackingUri)."""

    @abstractmethod
    def reach(self, service_suffix: str, port: int) -> contextlib.AbstractContextManager[str]:
        """An http:// base URL the test process can use for one of the release's Services."""

    @abstractmethod
    def metrics_port(self) -> int:
        """The operator's /metrics port (its Service's port)."""

    @abstractmethod
    def keeps_mlflow_volume(self) -> bool:
        """Whether the release has the embedded server's PVC, which uninstall keeps on purpose."""

    @abstractmethod
    def after_module(self) -> None:
        """Put the target back as the other tests expect it."""

    def helm(self, *args: str) -> str:
        result = subprocess.run([self.helm_bin, f"--kubeconfig={self.kubeconfig}", *args],
                                capture_output=True, text=True, timeout=600, env={**os.environ, **self.helm_env})
        assert result.returncode == 0, f"helm {' '.join(args)}: {result.stderr}"
        return result.stdout

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
                                capture_output=True, text=True, timeout=300)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result


class SandboxTarget(ChartTarget):
    release, namespace = "sandbox", "mlflow-system"
    node_name = "localhost"
    namespace_labels = {REAL_NODE_LABEL: "true"}

    def __init__(self, sandbox) -> None:
        homes = {f"HELM_{kind.upper()}_HOME": str(sandbox.state / "helm" / kind) for kind in ("cache", "config", "data")}
        super().__init__(sandbox.kubeconfig, str(sandbox.bin / "helm"), str(sandbox.bin / "kubectl"), homes)
        self.sandbox = sandbox
        self.mlflow_port = sandbox.ports["chart-mlflow"]

    def install(self, *set_values: str) -> None:
        args = [arg for value in set_values for arg in ("--set", value)]
        result = self.sandbox.sandbox("chart", *args)
        assert result.returncode == 0, result.stdout + result.stderr

    def tracking_uri(self) -> str:
        return f"http://127.0.0.1:{self.mlflow_port}"

    @contextlib.contextmanager
    def reach(self, service_suffix: str, port: int) -> Iterator[str]:
        yield f"http://127.0.0.1:{port}"  # host network: every pod listens on the loopback

    def metrics_port(self) -> int:
        return self.sandbox.ports["chart-operator-metrics"]

    def keeps_mlflow_volume(self) -> bool:
        return True

    def after_module(self) -> None:
        started = self.sandbox.sandbox("up")  # the local operator process again
        assert started.returncode == 0, started.stdout + started.stderr


class ClusterTarget(ChartTarget):
    """A cluster of the user's (kind, say) with the images already loaded into its nodes."""

    node_name = None
    values: dict = {}  # the release's computed values, read after each install

    def __init__(self, kubeconfig: Path) -> None:
        super().__init__(kubeconfig, find_tool("helm"), find_tool("kubectl"), {})
        self.release = os.environ.get("MLFLOW_OPERATOR_TEST_RELEASE", "mlflow-operator-test")
        self.namespace = os.environ.get("MLFLOW_OPERATOR_TEST_NAMESPACE", "mlflow-operator-test")
        self.values_file = os.environ.get("MLFLOW_OPERATOR_TEST_VALUES", "")
        # Labels the test namespaces need on this cluster, e.g. a Pod Security level: k=v,k=v.
        labels = os.environ.get("MLFLOW_OPERATOR_TEST_NAMESPACE_LABELS", "")
        self.namespace_labels = dict(pair.split("=", 1) for pair in labels.split(",") if pair)

    def install(self, *set_values: str) -> None:
        values = [*image_values("image", os.environ.get("OPERATOR_IMAGE", "")),
                  *image_values("mlflow.image", os.environ.get("MLFLOW_IMAGE", "")), *set_values]
        self.helm("upgrade", "--install", self.release, str(CHART), "--namespace", self.namespace,
                  "--create-namespace", *(["--values", self.values_file] if self.values_file else []),
                  *[arg for value in values for arg in ("--set", value)], "--wait", "--timeout=5m")
        self.values = json.loads(self.helm("get", "values", self.release, "--namespace", self.namespace, "--all",
                                           "--output=json"))
        self.mlflow_port = int(self.values["mlflow"]["port"])

    def tracking_uri(self) -> str:
        """tracking.uri if the values set one, else the embedded server's Service."""
        return (self.values["tracking"]["uri"]
                or f"http://{self.fullname}-mlflow.{self.namespace}.svc:{self.mlflow_port}")

    @contextlib.contextmanager
    def reach(self, service_suffix: str, port: int) -> Iterator[str]:
        forward = subprocess.Popen(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", "port-forward", "-n", self.namespace,
             f"service/{self.fullname}{service_suffix}", f":{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = forward.stdout.readline() if forward.stdout else ""
            found = re.search(r"127\.0\.0\.1:(\d+)", line)
            assert found, f"kubectl port-forward: {line}{forward.stderr.read() if forward.stderr else ''}"
            yield f"http://127.0.0.1:{found.group(1)}"
        finally:
            forward.terminate()
            forward.wait(timeout=10)

    def metrics_port(self) -> int:
        return int(self.values["metrics"]["service"]["port"])

    def keeps_mlflow_volume(self) -> bool:
        return bool(self.values["mlflow"]["enabled"] and self.values["mlflow"]["persistence"]["enabled"])

    def after_module(self) -> None:
        """Nothing to restore; the release namespace and the kept MLflow PVC stay for the next run."""


def image_values(key: str, reference: str) -> list[str]:
    """`repo:tag` as the chart's repository/tag values, pulled only if the node lacks it."""
    if not reference:
        return []
    repository, _, tag = reference.rpartition(":")
    if not repository or "/" in tag:
        raise ValueError(f"{reference!r}: give the image as repository:tag")
    return [f"{key}.repository={repository}", f"{key}.tag={tag}", f"{key}.pullPolicy=IfNotPresent"]


def find_tool(name: str) -> str:
    """HELM / KUBECTL from the environment, else PATH, else the ones the sandbox builds."""
    found = os.environ.get(name.upper()) or shutil.which(name)
    built = ROOT / os.environ.get("SANDBOX_DIR", ".sandbox") / "bin" / name
    if not found and built.exists():
        found = str(built)
    if not found:
        raise RuntimeError(f"{name} not found: put it on PATH or set {name.upper()}")
    return found
