"""What a TPE sweep costs the operator, measured in the sandbox: the RSS the operator gains
when it first imports Optuna and suggests trials, and how long trials wait for their
suggestion as the history grows.

A TPE TrainingSweep of N trials, one at a time, on kwok; the benchmark plays each trial's
held pod (logs a known function of its params to its run, finishes the pod). The operator's
RSS is read before the sweep (Optuna not imported yet: a unit test checks the operator does
not import it otherwise) and after. The gap between a trial ending and the next trial's
TrainingRun being created is the suggestion, the status writes and the events around it.

    .venv/bin/python benchmarks/search.py --trials 60 --output search
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

from mlflow import MlflowClient
from run import RESULTS, STATE, Cluster, Objects, operator_pid, restart_operator, rss_mib, wait_settled

HOLD = {"sandbox.mlflow.operator.dev/hold": "true"}
FINISH = "sandbox.mlflow.operator.dev/finish"


def score(params: dict[str, str]) -> float:
    return 1 - ((float(params["x"]) - 1.5) ** 2 + (float(params["y"]) + 0.5) ** 2) / 32


def play(cluster: Cluster, namespace: str, mlflow: MlflowClient, played: set[str]) -> bool:
    """Finish one running trial pod with its score; False if none is running."""
    for pod in cluster.core.list_namespaced_pod(namespace, label_selector="mlflow.operator.dev/training-run").items:
        if pod.status.phase != "Running" or pod.metadata.name in played:
            continue
        env = {e.name: e.value for e in pod.spec.containers[0].env or [] if e.value is not None}
        params = {k[len("MLFLOW_PARAM_"):].lower(): v for k, v in env.items() if k.startswith("MLFLOW_PARAM_")}
        mlflow.log_metric(env["MLFLOW_RUN_ID"], "accuracy", score(params))
        cluster.core.patch_namespaced_pod(pod.metadata.name, namespace,
                                          {"metadata": {"annotations": {FINISH: "succeeded"}}})
        played.add(pod.metadata.name)
        return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--output", default="search")
    args = parser.parse_args()
    restart_operator()  # a process that has not imported Optuna yet
    cluster, pid = Cluster(), operator_pid()
    wait_settled(pid)
    namespace = cluster.namespace("bench-search")  # also the MLflow workspace of the calls below
    os.environ["MLFLOW_TRACKING_TOKEN"] = (STATE / "mlflow-user-token").read_text().strip()
    mlflow = MlflowClient(f"http://127.0.0.1:{json.loads((STATE / 'ports.json').read_text())['mlflow']}")
    sweeps = Objects(cluster.custom, namespace, "trainingsweeps", "TrainingSweep")
    rss_before = rss_mib(pid)
    sweeps.create("tpe", {
        "experimentName": f"bench-search-{namespace}", "algorithm": {"type": "tpe", "seed": 1},
        "parameters": {"x": {"min": -4.0, "max": 4.0}, "y": {"min": -4.0, "max": 4.0}},
        "objective": {"metric": "accuracy"}, "maxTrials": args.trials, "parallelism": 1,
        "template": {"metadata": {"annotations": HOLD},
                     "spec": {"containers": [{"name": "t", "image": "trainer:1"}]}}})
    played: set[str] = set()
    started = time.monotonic()
    while time.monotonic() - started < 60 * args.trials:
        status: dict[str, Any] = sweeps.get("tpe").get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        if not play(cluster, namespace, mlflow, played):
            time.sleep(0.2)
    status = sweeps.get("tpe")["status"]
    assert status["phase"] == "Succeeded", status
    elapsed = time.monotonic() - started
    trials = cluster.custom.list_namespaced_custom_object("mlflow.operator.dev", "v1alpha1", namespace, "trainingruns")
    by_index = sorted(trials["items"], key=lambda t: int(t["metadata"]["labels"]["mlflow.operator.dev/trial"]))
    gaps = []  # whole seconds: creationTimestamp has no finer resolution
    for previous, following in zip(by_index, by_index[1:], strict=False):
        ended = previous["status"].get("completionTime")
        created = following["metadata"]["creationTimestamp"]
        if ended:
            gaps.append(time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ"))
                        - time.mktime(time.strptime(ended[:19] + "Z", "%Y-%m-%dT%H:%M:%SZ")))
    results = {
        "trials": args.trials, "seconds": round(elapsed, 1), "best": status["bestTrial"]["value"],
        "rss_mib_before": round(rss_before, 1), "rss_mib_after": round(rss_mib(pid), 1),
        "next_trial_created_after_seconds": {"median": statistics.median(gaps), "max": max(gaps),
                                             "first_10": statistics.median(gaps[:9]),
                                             "last_10": statistics.median(gaps[-10:])} if gaps else {},
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    cluster.delete_namespace(namespace, wait_gone=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.output}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
