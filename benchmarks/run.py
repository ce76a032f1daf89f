"""Benchmarks of the operator in the sandbox: how long objects take to become Ready, how
long the MLflow calls take, and what the operator costs in memory and CPU.

    make bench            (or: .venv/bin/python benchmarks/run.py [--experiments N] ...)

Writes benchmarks/results/latest.json and latest.md. Numbers depend on the machine; the
README quotes the run recorded in results/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox")).resolve()
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from kubernetes import client, config  # noqa: E402

from helpers import Objects  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def operator_pid() -> int:
    return int((STATE / "pids" / "operator.pid").read_text())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(percentile(values, 0.5), 3), "p95": round(percentile(values, 0.95), 3),
            "max": round(max(values), 3), "mean": round(statistics.mean(values), 3)}


def wait_all(objects: Objects, names: list[str], created: dict[str, float], done, timeout: float) -> dict[str, float]:
    """Seconds from creation to `done(object)` for each name (polled every 100 ms)."""
    finished: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(finished) < len(names):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(names) - len(finished)} {objects.kind}s not done after {timeout}s")
        items = objects.custom.list_namespaced_custom_object(
            "mlflow.operator.dev", "v1alpha1", objects.namespace, objects.plural)["items"]
        now = time.monotonic()
        for item in items:
            name = item["metadata"]["name"]
            if name in created and name not in finished and done(item):
                finished[name] = now - created[name]
        time.sleep(0.1)
    return finished


def is_ready(item: dict) -> bool:
    status = item.get("status") or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []) \
        and status.get("observedGeneration") == item["metadata"]["generation"]


def mlflow_latency() -> dict[str, dict[str, float]]:
    ports = json.loads((STATE / "ports.json").read_text())
    text = urllib.request.urlopen(f"http://127.0.0.1:{ports['operator-metrics']}/metrics", timeout=5).read().decode()
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("mlflow_operator_mlflow_request_duration_seconds_sum{"):
            labels, value = line.split("} ")
            operation = labels.split('operation="')[1].split('"')[0]
            sums[operation] = sums.get(operation, 0) + float(value)
        elif line.startswith("mlflow_operator_mlflow_request_duration_seconds_count{"):
            labels, value = line.split("} ")
            operation = labels.split('operation="')[1].split('"')[0]
            counts[operation] = counts.get(operation, 0) + float(value)
    return {op: {"calls": int(counts[op]), "mean_ms": round(1000 * sums[op] / counts[op], 1)}
            for op in sorted(counts) if counts[op]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", type=int, default=50)
    parser.add_argument("--training-runs", type=int, default=30)
    parser.add_argument("--models", type=int, default=20)
    parser.add_argument("--idle-seconds", type=float, default=60)
    args = parser.parse_args()

    up_start = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "sandbox" / "sandbox.py"), "restart", "operator"], check=True,
                   capture_output=True)
    operator_restart = time.monotonic() - up_start

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(STATE / "kubeconfig"), client_configuration=configuration)
    api = client.ApiClient(configuration)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    while True:
        try:
            core.read_namespaced_service_account("default", namespace)
            break
        except client.exceptions.ApiException:
            time.sleep(0.2)
    pid = operator_pid()
    rss_start = rss_mib(pid)
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "kernel": platform.release()},
                     "operator_restart_seconds": round(operator_restart, 2), "rss_mib": {"idle_start": round(rss_start, 1)}}
    try:
        experiments = Objects(custom, namespace, "experiments", "Experiment")
        names = [f"exp-{i}" for i in range(args.experiments)]
        created: dict[str, float] = {}
        burst = time.monotonic()
        for name in names:
            experiments.create(name, {"tags": {"bench": "true"}})
            created[name] = time.monotonic()
        ready = wait_all(experiments, names, created, is_ready, timeout=600)
        results["experiments"] = {"time_to_ready_seconds": summary(list(ready.values())),
                                  "all_ready_after_seconds": round(time.monotonic() - burst, 2)}

        runs = Objects(custom, namespace, "trainingruns", "TrainingRun")
        run_names = [f"run-{i}" for i in range(args.training_runs)]
        created = {}
        burst = time.monotonic()
        for i, name in enumerate(run_names):
            runs.create(name, {"experimentRef": {"name": names[i % len(names)]}, "params": {"i": str(i)},
                               "template": {"spec": {"containers": [{"name": "t", "image": "trainer:1"}]}}})
            created[name] = time.monotonic()
        succeeded = wait_all(runs, run_names, created,
                             lambda item: (item.get("status") or {}).get("phase") == "Succeeded", timeout=900)
        results["training_runs"] = {
            "create_to_succeeded_seconds": summary(list(succeeded.values())),
            "all_succeeded_after_seconds": round(time.monotonic() - burst, 2),
            "note": "kwok pods run for about 1 s; this is the operator's and Kubernetes' overhead around that",
        }

        models = Objects(custom, namespace, "registeredmodels", "RegisteredModel")
        model_names = [f"model-{i}" for i in range(args.models)]
        created = {}
        burst = time.monotonic()
        suffix = uuid.uuid4().hex[:6]
        for name in model_names:
            models.create(name, {"name": f"bench-{suffix}-{name}", "description": "bench", "tags": {"a": "b"}})
            created[name] = time.monotonic()
        ready = wait_all(models, model_names, created, is_ready, timeout=600)
        results["registered_models"] = {"time_to_ready_seconds": summary(list(ready.values())),
                                        "all_ready_after_seconds": round(time.monotonic() - burst, 2)}

        results["rss_mib"]["after_load"] = round(rss_mib(pid), 1)
        total = args.experiments + args.training_runs + args.models
        cpu_before = cpu_seconds(pid)
        time.sleep(args.idle_seconds)
        idle_cpu = cpu_seconds(pid) - cpu_before
        results["idle_drift_checks"] = {
            "objects": total,
            "seconds": args.idle_seconds,
            "operator_cpu_percent_of_one_core": round(100 * idle_cpu / args.idle_seconds, 1),
            "drift_interval_seconds": 10,
        }
        results["rss_mib"]["after_idle"] = round(rss_mib(pid), 1)
        results["mlflow_calls"] = mlflow_latency()
    finally:
        core.delete_namespace(namespace)

    RESULTS.mkdir(parents=True, exist_ok=True)
    results["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "latest.md").write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


def render_markdown(r: dict) -> str:
    e, t, m = r["experiments"], r["training_runs"], r["registered_models"]
    rows = [
        ("Experiments created at once", e["time_to_ready_seconds"]["n"], e["time_to_ready_seconds"], e["all_ready_after_seconds"]),
        ("TrainingRuns created at once (create -> Succeeded)", t["create_to_succeeded_seconds"]["n"],
         t["create_to_succeeded_seconds"], t["all_succeeded_after_seconds"]),
        ("RegisteredModels created at once", m["time_to_ready_seconds"]["n"], m["time_to_ready_seconds"], m["all_ready_after_seconds"]),
    ]
    lines = [f"Recorded {r['recorded_at']} on {r['machine']['cpus']} CPUs, Python {r['machine']['python']}.", "",
             "| burst | n | p50 s | p95 s | max s | all done after s |", "|---|---|---|---|---|---|"]
    for label, n, s, total in rows:
        lines.append(f"| {label} | {n} | {s['p50']} | {s['p95']} | {s['max']} | {total} |")
    idle = r["idle_drift_checks"]
    lines += ["", f"Operator memory (RSS): {r['rss_mib']['idle_start']} MiB at start, {r['rss_mib']['after_load']} MiB "
              f"after the bursts, {r['rss_mib']['after_idle']} MiB after {idle['seconds']:.0f} s idle.",
              f"Idle with {idle['objects']} objects and a {idle['drift_interval_seconds']} s drift interval: "
              f"{idle['operator_cpu_percent_of_one_core']} % of one core.", "",
              "| MLflow call | calls | mean ms |", "|---|---|---|"]
    for op, stats in r["mlflow_calls"].items():
        lines.append(f"| {op} | {stats['calls']} | {stats['mean_ms']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
