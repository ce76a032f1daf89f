"""Print what to look at once `make sandbox` is up (called by the Makefile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox")).resolve()


def settle(kubectl: list[str], timeout: float = 600) -> str:
    """Wait for the example: its container trains on the real node, the run closes and
    registers its model, and the RegisteredModel sees version 1 at its next drift check.
    Returns the TrainingRun's phase."""
    deadline = time.monotonic() + timeout
    print("Waiting for the example TrainingRun to train in its container and register its model...")
    phase = ""
    while time.monotonic() < deadline:
        phase = subprocess.run([*kubectl, "get", "trainingrun", "churn-rf-1", "-n", "default", "-o",
                                "jsonpath={.status.phase}"], capture_output=True, text=True).stdout
        ready = subprocess.run([*kubectl, "get", "registeredmodel", "churn-model", "-n", "default", "-o",
                                "jsonpath={.status.conditions[?(@.type=='Ready')].status}"],
                               capture_output=True, text=True).stdout
        if phase == "Failed" or (phase == "Succeeded" and ready == "True"):
            break
        time.sleep(1)
    return phase


def main() -> None:
    ports = json.loads((STATE / "ports.json").read_text())
    kubectl = [str(STATE / "bin" / "kubectl"), f"--kubeconfig={STATE / 'kubeconfig'}", f"--cache-dir={STATE / 'kube-cache'}"]
    phase = settle(kubectl)
    listing = subprocess.run([*kubectl, "get", "mlflow", "-A"], capture_output=True, text=True)
    pods = subprocess.run([*kubectl, "get", "pods", "-n", "default", "-l", "job-name=churn-rf-1", "-o", "wide"],
                          capture_output=True, text=True)
    print()
    print("The sandbox is up: a Kubernetes control plane with kwok nodes and a real node, MLflow and the operator.")
    print()
    print(listing.stdout or listing.stderr)
    print(pods.stdout or pods.stderr)
    if phase != "Succeeded":
        print(f"The example TrainingRun did not succeed (phase {phase or 'none'}): see")
        print("  kubectl describe trainingrun churn-rf-1 -n default")
        print("  kubectl logs -n default -l job-name=churn-rf-1")
        sys.exit(1)
    print("Next:")
    print(f"  source {STATE / 'env'}            # kubectl, helm, KUBECONFIG, MLFLOW_TRACKING_URI and _TOKEN")
    print("  kubectl get mlflow -A                   # every Experiment, TrainingRun, RegisteredModel, TrainingSweep")
    print("  kubectl describe experiments -A         # conditions and Events")
    print("  kubectl logs -n default -l job-name=churn-rf-1   # the training container's output")
    print("  kubectl get trainingsweeps -n default -w          # the example sweep: TPE, 12 trials, 3 at a time")
    print("  kubectl get trainingrun churn-ddp-1 -n default    # the distributed example: 2 nodes, one MLflow run")
    print("  MLFLOW_WORKSPACE=default .venv/bin/mlflow experiments search   # MLflow, in the default namespace's workspace")
    print(f"  curl -H \"Authorization: Bearer $MLFLOW_TRACKING_TOKEN\" -H 'X-MLFLOW-WORKSPACE: default' "
          f"http://127.0.0.1:{ports['mlflow']}/api/2.0/mlflow/experiments/search")
    print("  # the MLflow UI needs a bearer token too: README, 'Workspace servers'")
    print(f"  tail -f {STATE / 'logs' / 'operator.log'}")
    print(f"  curl -s http://127.0.0.1:{ports['operator-metrics']}/metrics | grep mlflow_operator")
    print("  make sandbox-down                       # stop everything the sandbox started")


if __name__ == "__main__":
    main()
