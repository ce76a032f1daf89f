"""The image's install steps, run here in a clean virtualenv (no Docker engine on these
machines to build the image itself): the result is a working `mlflow-operator` with only
its runtime dependencies."""

from __future__ import annotations

import os
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest

from helpers import Objects, wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clean_install(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("image") / "venv"
    result = subprocess.run(["sh", str(ROOT / "scripts" / "install-operator.sh"), str(venv), str(ROOT)],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return venv


def test_the_dockerfile_uses_the_install_script():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "RUN sh scripts/install-operator.sh /opt/venv /src" in dockerfile
    assert "USER 10001" in dockerfile


def test_the_clean_install_has_the_command_and_no_installer(clean_install):
    version = subprocess.run([str(clean_install / "bin" / "mlflow-operator"), "--version"],
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("mlflow-operator ")
    assert not (clean_install / "bin" / "pip").exists()


def test_the_clean_install_has_neither_the_mlflow_nor_the_kubernetes_package(clean_install):
    """The gateways speak REST (decision 0018): what the image holds is kopf, pydantic,
    prometheus-client and requests, not 200 MiB of client libraries and their models."""
    probe = subprocess.run(
        [str(clean_install / "bin" / "python"), "-c",
         "import importlib.util as u;"
         "print(*(u.find_spec(m) is None for m in ('mlflow', 'kubernetes', 'flask', 'sklearn')))"],
        capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.split() == ["True"] * 4


def test_the_clean_install_runs_and_reconciles(clean_install, sandbox, namespace, custom, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        health = sock.getsockname()[1]
    log = (tmp_path / "operator.log").open("w")
    stopped = sandbox.sandbox("stop", "operator")
    assert stopped.returncode == 0, stopped.stderr
    process = subprocess.Popen(
        [str(clean_install / "bin" / "mlflow-operator"), "run", f"--namespace={namespace}",
         f"--tracking-uri={sandbox.tracking_uri}", f"--workspace-tracking-server={sandbox.tracking_uri}",
         f"--workspace-token-file={sandbox.state / 'operator-token'}", f"--health-port={health}", "--metrics-port=0",
         "--bind-address=127.0.0.1", "--log-format=json", f"--ownership-keys={sandbox.state / 'ownership-keys'}"],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
             "KUBECONFIG": str(sandbox.state / "operator.kubeconfig")},
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        wait_for(lambda: urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2).status == 200,
                 timeout=60, message="the clean install to be healthy")
        experiments = Objects(custom, namespace, "experiments", "Experiment")
        experiments.create("from-image", {})
        experiments.wait_ready("from-image")
    finally:
        process.terminate()
        process.wait(timeout=30)
        restarted = sandbox.sandbox("up")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    first_line = (tmp_path / "operator.log").read_text().splitlines()[0]
    assert first_line.startswith("{"), "--log-format=json writes JSON lines"
