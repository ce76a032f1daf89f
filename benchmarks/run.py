"""Benchmarks of the operator in the sandbox, each beside the floor a direct client sets.

    make bench                 (or: .venv/bin/python benchmarks/run.py [--training-runs N] ...)

Scenarios (sizes are flags, small by default; the README gives the recorded larger runs):

- dispatch: N TrainingRuns applied at once (8 threads). Measured until every one has its
  MLflow run and its Job, and until every one is Succeeded. In the same run, the floor: a
  direct client with 8 threads creates the same N MLflow runs (tags and params) and N Jobs
  itself, waits for the Jobs and closes the runs. The cost of one TrainingRun lifecycle is
  read from the operator's own metrics (API calls labelled with the kind reconciled).
  The API server's own request count gives the writes per run of every client on each
  side (the Job controller's, the scheduler's and kwok's as well as the operator's).
  The benchmark sees the operator's progress through watches (one per resource), not by
  listing: a probe that lists 200 objects four times a second loads the 2 cores the
  operator shares, and the floor's own client waits on nothing.
  The scenario runs --rounds times (floor, then operator, each in a new namespace); the
  table gives the median of each side and their ratio, with every round's figures beside:
  on 2 shared cores one round's floor varies by a factor of two.
- distributed dispatch (--distributed-runs N --distributed-nodes K, default 50 x 4): the
  dispatch scenario with distributed TrainingRuns, each an Indexed Job of K pods and a
  headless Service; the floor creates the same Services, Indexed Jobs and runs itself.
- apply while deleting (--apply-while-deleting N): N Experiments Ready, then their namespace
  deleted and, at once, one Experiment applied elsewhere: how long it waits behind them.
- closed runs (--closed-training-runs): N TrainingRuns run to Succeeded and kept while the
  next scenario runs, so that it measures an operator holding them too.
- synced objects: Experiments and RegisteredModels applied at once (each model registered
  beforehand with --versions-per-model versions), then, one interval later, idle with them:
  operator CPU, MLflow calls and model versions read per drift interval, RSS. With
  --restart-with-objects, the operator is then restarted with every object present and, once
  it has resumed them all, measured again: the footprint of holding the objects, without the
  peak of the burst that made them.

The drift interval is the running operator's: the sandbox's 10 s, or SANDBOX_DRIFT_INTERVAL
(e.g. 60, the chart's default) when the benchmark restarts the operator.

Writes benchmarks/results/latest.json and latest.md (--output names others). Numbers depend
on the machine.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("SANDBOX_DIR", ROOT / ".sandbox")).resolve()
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "tests"))

from kubernetes import client, config, watch  # noqa: E402
from mlflow.entities import Param, RunTag  # noqa: E402
from mlflow.entities.model_registry import RegisteredModelTag  # noqa: E402
from mlflow.store.model_registry.rest_store import RestStore as RegistryStore  # noqa: E402
from mlflow.store.tracking.rest_store import RestStore  # noqa: E402
from mlflow.utils.rest_utils import MlflowHostCreds  # noqa: E402
from mlflow.utils.workspace_context import set_workspace  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from mlflow_operator.api.common import ObjectIdentity  # noqa: E402
from mlflow_operator.api.trainingrun import TrainingRunSpec  # noqa: E402
from mlflow_operator.logic import signing  # noqa: E402
from mlflow_operator.logic import trainingrun as training  # noqa: E402

from helpers import TRAINING_CLUSTER_ROLE, Objects, bind_cluster_role  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
GROUP, VERSION = "mlflow.operator.dev", "v1alpha1"
THREADS = 8
# Kubernetes API calls of the operator's gateway that change something (dry runs persist nothing).
READ_PREFIXES = ("get_", "read_", "list_")
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY")


# --------------------------------------------------------------------------- measuring the process


def operator_pid() -> int:
    return int((STATE / "pids" / "operator.pid").read_text())


def drift_interval(pid: int) -> float:
    """The running operator's --drift-interval (the sandbox's, or SANDBOX_DRIFT_INTERVAL)."""
    argv = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    return float(next(a for a in argv if a.startswith("--drift-interval=")).split("=", 1)[1])


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


class OperatorMetrics:
    """Counters from the operator's /metrics: API calls by the kind reconciled and operation."""

    def __init__(self) -> None:
        ports = json.loads((STATE / "ports.json").read_text())
        self.url = f"http://127.0.0.1:{ports['operator-metrics']}/metrics"

    def snapshot(self) -> dict[tuple[str, str, str], float]:
        text = urllib.request.urlopen(self.url, timeout=5).read().decode()
        counts: dict[tuple[str, str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "mlflow_operator_mlflow_request_duration_seconds_count":
                    key = ("mlflow", sample.labels["kind"], sample.labels["operation"])
                elif sample.name == "mlflow_operator_kubernetes_request_duration_seconds_count":
                    key = ("kubernetes", sample.labels["kind"], sample.labels["operation"])
                elif sample.name == "mlflow_operator_events_total":
                    key = ("events", sample.labels["kind"], sample.labels["type"])
                elif sample.name == "mlflow_operator_model_versions_read_total":
                    key = ("versions", sample.labels["kind"], "read")
                else:
                    continue
                counts[key] = counts.get(key, 0) + sample.value
        return counts

    @staticmethod
    def delta(before: dict, after: dict, kind: str | None = None) -> dict[tuple[str, str], float]:
        result: dict[tuple[str, str], float] = {}
        for (api, k, op), value in after.items():
            if kind is not None and k != kind:
                continue
            diff = value - before.get((api, k, op), 0)
            if diff:
                result[(api, op)] = result.get((api, op), 0) + diff
        return result


def lifecycle_cost(calls: dict[tuple[str, str], float], n: int) -> dict[str, Any]:
    per_op = {f"{api}:{op}": round(value / n, 2) for (api, op), value in sorted(calls.items())}
    mlflow = sum(v for (api, _), v in calls.items() if api == "mlflow") / n
    kube_writes = sum(v for (api, op), v in calls.items()
                      if api == "kubernetes" and not op.startswith(READ_PREFIXES) and not op.endswith("_dry_run")) / n
    kube_reads = sum(v for (api, op), v in calls.items() if api == "kubernetes" and op.startswith(READ_PREFIXES)) / n
    dry_runs = sum(v for (api, op), v in calls.items() if api == "kubernetes" and op.endswith("_dry_run")) / n
    events = sum(v for (api, _), v in calls.items() if api == "events") / n
    return {"mlflow_calls": round(mlflow, 2), "kubernetes_writes": round(kube_writes, 2),
            "kubernetes_reads": round(kube_reads, 2), "kubernetes_dry_runs": round(dry_runs, 2),
            "events": round(events, 2), "by_operation": per_op}


# --------------------------------------------------------------------------- cluster helpers


class Cluster:
    def __init__(self) -> None:
        configuration = client.Configuration()
        config.load_kube_config(config_file=str(STATE / "kubeconfig"), client_configuration=configuration)
        configuration.connection_pool_maxsize = 2 * THREADS
        self.api = client.ApiClient(configuration)
        self.core, self.batch = client.CoreV1Api(self.api), client.BatchV1Api(self.api)
        self.custom = client.CustomObjectsApi(self.api)

    def namespace(self, prefix: str) -> str:
        """A team's namespace: its training pods may log to the workspace server as its default
        ServiceAccount (the RoleBinding a team makes), and direct MLflow calls work in its workspace."""
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        wait(lambda: self._has_default_account(name), 60, f"namespace {name}")
        bind_cluster_role(self.api, name, TRAINING_CLUSTER_ROLE, "default")
        set_workspace(name)
        return name

    def _has_default_account(self, namespace: str) -> bool:
        try:
            self.core.read_namespaced_service_account("default", namespace)
            return True
        except client.exceptions.ApiException:
            return False

    def delete_namespace(self, namespace: str, wait_gone: bool = True) -> None:
        self.core.delete_namespace(namespace)
        if wait_gone:
            wait(lambda: not self.exists(namespace), 300, f"namespace {namespace} deleted")

    def exists(self, namespace: str) -> bool:
        try:
            self.core.read_namespace(namespace)
            return True
        except client.exceptions.ApiException as error:
            if error.status == 404:
                return False
            raise

    def api_server_writes(self) -> dict[str, float]:
        """The API server's count of the requests that change something (every client: the
        operator, kopf, the benchmark, the Job controller, the scheduler, kwok), by verb and
        resource; dry runs are counted apart."""
        response = self.api.call_api("/metrics", "GET", _preload_content=False, auth_settings=["BearerToken"])[0]
        counts: dict[str, float] = {}
        for family in text_string_to_metric_families(response.data.decode()):
            for sample in family.samples:
                labels = sample.labels
                if sample.name != "apiserver_request_total" or labels.get("verb") not in WRITE_VERBS:
                    continue
                resource = "/".join(part for part in (labels.get("resource"), labels.get("subresource")) if part)
                key = f"{labels['verb']} {resource}" + (" (dry run)" if labels.get("dry_run") else "")
                counts[key] = counts.get(key, 0) + sample.value
        return counts



class Watched:
    """What the watch of one resource in one namespace shows of each object (`keep` of it),
    kept up to date by a thread. Waiting reads it in memory: measuring costs the API server
    one watch, not a list per probe (one list of 200 Jobs costs the API server about 60 ms
    of CPU and the Python client about 270 ms to decode, on the 2 cores the operator shares;
    the floor's own client waits on nothing)."""

    def __init__(self, cluster: Cluster, namespace: str, plural: str, keep: Callable[[dict], Any],
                 group: str = GROUP, version: str = VERSION) -> None:
        self.kept: dict[str, Any] = {}
        self.error: Exception | None = None
        self._lock = threading.Lock()
        self._watch = watch.Watch()
        # Without a resourceVersion the watch starts with every object there is (ADDED):
        # nothing made before it connects is missed.
        stream = self._watch.stream(cluster.custom.list_namespaced_custom_object, group, version, namespace, plural)
        threading.Thread(target=self._follow, args=(stream, keep), daemon=True).start()

    def _follow(self, stream: Any, keep: Callable[[dict], Any]) -> None:
        try:
            for event in stream:
                name = event["object"]["metadata"]["name"]
                with self._lock:
                    if event["type"] == "DELETED":
                        self.kept.pop(name, None)
                    else:
                        self.kept[name] = keep(event["object"])
        except Exception as error:  # shown by the next count()
            self.error = error

    def count(self, predicate: Callable[[Any], bool] = bool) -> int:
        if self.error is not None:
            raise self.error
        with self._lock:
            return sum(1 for value in self.kept.values() if predicate(value))

    def stop(self) -> None:
        """The thread ends at the stream's next event (the namespace's deletion brings one)."""
        self._watch.stop()


def wait(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout}s")
        time.sleep(interval)


def is_ready(item: dict) -> bool:
    status = item.get("status") or {}
    return any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []) \
        and status.get("observedGeneration") == item["metadata"]["generation"]


def job_finished(job: dict) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in conditions)


def phase(item: dict) -> str | None:
    return (item.get("status") or {}).get("phase")


def jobs_watched(cluster: Cluster, namespace: str, keep: Callable[[dict], Any]) -> Watched:
    return Watched(cluster, namespace, "jobs", keep, group="batch", version="v1")


# --------------------------------------------------------------------------- dispatch


TEMPLATE = {"spec": {"containers": [{"name": "t", "image": "trainer:1"}]}}


def run_spec(i: int, nodes: int = 1) -> dict:
    """TrainingRun i; with nodes > 1 a distributed one (an Indexed Job of `nodes` pods)."""
    spec: dict[str, Any] = {"experimentRef": {"name": "bench"}, "params": {"i": str(i), "lr": "0.01"},
                            "template": TEMPLATE}
    if nodes > 1:
        spec["distributed"] = {"nodes": nodes}
    return spec


def writes_per_run(before: dict[str, float], after: dict[str, float], n: int) -> dict[str, Any]:
    """API server writes per run between two counts: in all, and by verb and resource."""
    delta = {key: after[key] - before.get(key, 0) for key in after if after[key] - before.get(key, 0) > 0}
    real = {key: value for key, value in delta.items() if not key.endswith("(dry run)")}
    return {"all": round(sum(real.values()) / n, 2),
            "by_request": {key: round(value / n, 2) for key, value in sorted(delta.items(), key=lambda kv: -kv[1])
                           if value / n >= 0.05}}


def direct_creds(tracking_uri: str) -> MlflowHostCreds:
    """The sandbox user's token: the default server is a workspace server (the workspace is
    the namespace Cluster.namespace made last)."""
    return MlflowHostCreds(tracking_uri, token=(STATE / "mlflow-user-token").read_text().strip())


def floor_dispatch(cluster: Cluster, n: int, tracking_uri: str, nodes: int = 1) -> dict[str, Any]:
    """What a direct client needs for the same work: N MLflow runs with their tags and
    params, N Jobs (the operator's Job body, without its owner and finalizer; for distributed
    runs an Indexed Job and, before it, its headless Service), 8 threads; then it waits for
    the Jobs and closes the runs."""
    namespace = cluster.namespace("bench-floor")
    store = RestStore(lambda: direct_creds(tracking_uri))
    experiment_id = store.create_experiment(f"bench-floor-{namespace}")

    def dispatch_one(i: int) -> str:
        name = f"run-{i}"
        identity = ObjectIdentity(kind="TrainingRun", namespace=namespace, name=name, uid=str(uuid.uuid4()))
        spec = TrainingRunSpec.parse(run_spec(i, nodes))
        run = store.create_run(experiment_id, "mlflow-operator", int(time.time() * 1000),
                               [RunTag(k, v) for k, v in training.run_tags(spec, identity, "trainer:1").items()],
                               training.run_name(spec, identity))
        store.log_batch(run.info.run_id, metrics=[], params=[Param(k, v) for k, v in spec.params.items()], tags=[])
        job = copy.deepcopy(training.build_job(spec, identity, run.info.run_id, experiment_id, tracking_uri,
                                               training.CredentialSource.for_service_account()))
        job["metadata"].pop("ownerReferences", None)
        job["metadata"].pop("finalizers", None)
        service = training.build_service(spec, identity)
        if service is not None:
            service["metadata"].pop("ownerReferences", None)
            cluster.core.create_namespaced_service(namespace, service)
        cluster.batch.create_namespaced_job(namespace, job)
        return run.info.run_id

    jobs = jobs_watched(cluster, namespace, job_finished)
    writes_before = cluster.api_server_writes()
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        run_ids = list(pool.map(dispatch_one, range(n)))
    dispatched = time.monotonic() - started
    writes_dispatched = cluster.api_server_writes()
    wait(lambda: jobs.count() == n, 1800, "floor Jobs finished", 0.05)
    jobs.stop()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda run_id: store.update_run_info(run_id, "FINISHED", int(time.time() * 1000), None),
                      run_ids))
    end_to_end = time.monotonic() - started
    writes_after = cluster.api_server_writes()
    cluster.delete_namespace(namespace)
    return {"dispatch_seconds": round(dispatched, 2), "end_to_end_seconds": round(end_to_end, 2),
            "api_server_writes_per_run_dispatch": writes_per_run(writes_before, writes_dispatched, n),
            "api_server_writes_per_run_end_to_end": writes_per_run(writes_before, writes_after, n)}


def operator_dispatch(cluster: Cluster, metrics: OperatorMetrics, n: int, closed_idle_seconds: float,
                      nodes: int = 1, tracking_server: str | None = None) -> dict:
    namespace = cluster.namespace("bench-runs")
    experiments = Objects(cluster.custom, namespace, "experiments", "Experiment")
    experiments.create("bench", {"name": f"bench-{namespace}",
                                 **({"tracking": {"uri": tracking_server}} if tracking_server else {})})
    wait(lambda: is_ready(experiments.get("bench")), 60, "Experiment bench Ready")
    runs = Objects(cluster.custom, namespace, "trainingruns", "TrainingRun")
    watched = Watched(cluster, namespace, "trainingruns", lambda item: ((item.get("status") or {}).get("runId"),
                                                                          phase(item)))
    jobs = jobs_watched(cluster, namespace, lambda job: True)
    before = metrics.snapshot()
    writes_before = cluster.api_server_writes()

    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: runs.create(f"run-{i}", run_spec(i, nodes)), range(n)))
    applied = time.monotonic() - started

    def dispatched() -> bool:
        return watched.count(lambda seen: bool(seen[0])) == n and jobs.count() == n

    wait(dispatched, 1800, "every TrainingRun with its run and Job", 0.05)
    dispatch_seconds = time.monotonic() - started
    writes_dispatched = cluster.api_server_writes()
    jobs.stop()
    wait(lambda: watched.count(lambda seen: seen[1] == "Succeeded") == n, 1800, "every run Succeeded", 0.05)
    watched.stop()
    end_to_end = time.monotonic() - started
    writes_after = cluster.api_server_writes()
    after = metrics.snapshot()
    time.sleep(closed_idle_seconds)
    idle = metrics.snapshot()
    closed_calls = OperatorMetrics.delta(after, idle, "TrainingRun")
    result = {
        "apply_seconds": round(applied, 2),
        "dispatch_seconds": round(dispatch_seconds, 2),
        "end_to_end_seconds": round(end_to_end, 2),
        "lifecycle": lifecycle_cost(OperatorMetrics.delta(before, after, "TrainingRun"), n),
        "closed_runs_idle_seconds": closed_idle_seconds,
        "mlflow_calls_for_closed_runs": int(sum(v for (api, _), v in closed_calls.items() if api == "mlflow")),
        "api_server_writes_per_run_dispatch": writes_per_run(writes_before, writes_dispatched, n),
        "api_server_writes_per_run_end_to_end": writes_per_run(writes_before, writes_after, n),
    }
    cluster.delete_namespace(namespace)  # before the next scenario measures an idle operator
    return result


def mean_costs(rounds: list[dict[str, Any]], detail: str) -> dict[str, Any]:
    """Per-run costs averaged over the rounds: each total, and each entry of `detail` (a
    count by operation or request; one missing from a round counts 0 there)."""
    keys = sorted({key for r in rounds for key in r[detail]})
    mean = {key: round(statistics.mean(r[key] for r in rounds), 2) for key in rounds[0] if key != detail}
    mean[detail] = {key: round(statistics.mean(r[detail].get(key, 0) for r in rounds), 2) for key in keys}
    return mean


def dispatch_medians(rounds: list[tuple[dict, dict]]) -> dict[str, Any]:
    """The median round of each side, the ratio of the medians, the lifecycle cost averaged
    over the rounds, and every round as measured."""
    floors, operators = [f for f, _ in rounds], [o for _, o in rounds]

    def median(side: list[dict], key: str) -> float:
        return round(statistics.median(item[key] for item in side), 2)

    lifecycle = mean_costs([o["lifecycle"] for o in operators], "by_operation")
    floor: dict[str, Any] = {key: median(floors, key) for key in ("dispatch_seconds", "end_to_end_seconds")}
    operator: dict[str, Any] = {key: median(operators, key)
                                for key in ("apply_seconds", "dispatch_seconds", "end_to_end_seconds")}
    for side, items in ((floor, floors), (operator, operators)):
        for window in ("dispatch", "end_to_end"):
            key = f"api_server_writes_per_run_{window}"
            side[key] = mean_costs([item[key] for item in items], "by_request")
    operator.update(lifecycle=lifecycle, closed_runs_idle_seconds=operators[0]["closed_runs_idle_seconds"],
                    mlflow_calls_for_closed_runs=max(o["mlflow_calls_for_closed_runs"] for o in operators))
    return {
        "floor": floor, "operator": operator,
        "dispatch_ratio": round(operator["dispatch_seconds"] / floor["dispatch_seconds"], 2),
        "rounds": [{"floor_dispatch_seconds": f["dispatch_seconds"], "operator_dispatch_seconds": o["dispatch_seconds"],
                    "ratio": round(o["dispatch_seconds"] / f["dispatch_seconds"], 2)} for f, o in rounds],
    }


# --------------------------------------------------------------------------- synced objects


def burst(cluster: Cluster, namespace: str, plural: str, kind: str, n: int, spec_of: Callable[[int], dict]) -> dict:
    """Apply n objects at once (8 threads); seconds until all are Ready."""
    objects = Objects(cluster.custom, namespace, plural, kind)
    watched = Watched(cluster, namespace, plural, is_ready)
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: objects.create(f"o-{i}", spec_of(i)), range(n)))
    wait(lambda: watched.count() == n, max(1800, n), f"{kind}s Ready", 0.05)
    watched.stop()
    return {"n": n, "all_ready_after_seconds": round(time.monotonic() - started, 2)}


def create_missing(objects: Objects, name: str, spec: dict) -> None:
    try:
        objects.create(name, spec)
    except client.ApiException as error:
        if error.status != 409:
            raise


def closed_runs(cluster: Cluster, n: int, namespace: str | None) -> tuple[str, dict]:
    """N TrainingRuns run to Succeeded and kept (the namespace is returned for deletion later),
    so that the synced-objects scenario measures an operator that also holds closed runs.
    Given the namespace of an earlier such run, its runs are kept and only the missing ones made."""
    reused = namespace is not None
    namespace = namespace or cluster.namespace("bench-closed")
    create_missing(Objects(cluster.custom, namespace, "experiments", "Experiment"), "bench",
                   {"name": f"bench-{namespace}"})
    runs = Objects(cluster.custom, namespace, "trainingruns", "TrainingRun")
    watched = Watched(cluster, namespace, "trainingruns", phase)
    started = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda i: create_missing(runs, f"run-{i}", run_spec(i)), range(n)))
    wait(lambda: watched.count(lambda seen: seen == "Succeeded") == n, max(1800, n), "every closed run Succeeded",
         0.05)
    watched.stop()
    return namespace, {"n": n, "all_succeeded_after_seconds": round(time.monotonic() - started, 2),
                       "kept_from_an_earlier_run": reused}


def idle_window(pid: int, metrics: OperatorMetrics, seconds: float, interval: float, n_experiments: int,
                n_models: int, n_versions: int) -> dict:
    """The operator left alone with its objects for `seconds`: CPU, calls per interval, RSS."""
    before, cpu_before = metrics.snapshot(), cpu_seconds(pid)
    time.sleep(seconds)
    idle_cpu, after = cpu_seconds(pid) - cpu_before, metrics.snapshot()
    calls = OperatorMetrics.delta(before, after)
    intervals = seconds / interval
    kube_writes = sum(v for (api, op), v in calls.items() if api == "kubernetes" and not op.startswith(READ_PREFIXES))

    def per_100(kind: str, n: int) -> float:
        kind_calls = OperatorMetrics.delta(before, after, kind)
        return round(100 * sum(v for (api, _), v in kind_calls.items() if api == "mlflow") / intervals / max(n, 1), 1)

    return {
        "seconds": seconds, "drift_interval_seconds": interval,
        "operator_cpu_percent_of_one_core": round(100 * idle_cpu / seconds, 1),
        "mlflow_calls_per_interval_per_100_experiments": per_100("Experiment", n_experiments),
        "mlflow_calls_per_interval_per_100_models": per_100("RegisteredModel", n_models),
        "model_versions": n_versions,
        "model_versions_read_per_interval": round(
            OperatorMetrics.delta(before, after, "RegisteredModel").get(("versions", "read"), 0) / intervals, 1),
        "kubernetes_writes_per_interval": round(kube_writes / intervals, 1),
        "rss_mib": round(rss_mib(pid), 1),
    }


def restart_operator() -> None:
    subprocess.run([sys.executable, str(ROOT / "sandbox" / "sandbox.py"), "restart", "operator"], check=True,
                   capture_output=True)


def wait_settled(pid: int, window: float = 10, busy_percent: float = 20, timeout: float = 1800) -> float:
    """Seconds until the operator's CPU stays under `busy_percent` of a core for a window:
    after a restart, kopf resumes every object before it goes quiet."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(window)
        if 100 * (cpu_seconds(pid) - before) / window < busy_percent:
            return round(time.monotonic() - started, 1)
    raise TimeoutError(f"the operator stayed busy for {timeout}s after its restart")


def registered_versions(tracking_uri: str, namespace: str, n_models: int, versions: int) -> dict:
    """The benchmark's registered models, each with `versions` versions, registered directly
    (as TrainingRuns of the namespace would have): its RegisteredModels take them over."""
    registry = RegistryStore(lambda: direct_creds(tracking_uri))
    keys = signing.KeyRing.from_directory(STATE / "ownership-keys")  # the sandbox operator's
    started = time.monotonic()

    def register(i: int) -> None:
        name = f"bench-{namespace}-{i}"
        owner = signing.signed(keys, tracking_uri, "registered-model", name, {"k8s.namespace": namespace})
        registry.create_registered_model(name, tags=[RegisteredModelTag(k, v) for k, v in owner.items()])
        for v in range(versions):
            registry.create_model_version(name, source=f"s3://bench/{name}/{v}")

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(register, range(n_models)))
    return {"per_model": versions, "registered_in_seconds": round(time.monotonic() - started, 1)}


def synced_objects(cluster: Cluster, metrics: OperatorMetrics, n_experiments: int, n_models: int,
                   idle_seconds: float, interval: float, other_objects: int, restart: bool,
                   tracking_uri: str, versions_per_model: int) -> dict:
    namespace = cluster.namespace("bench-synced")
    pid = operator_pid()
    result: dict[str, Any] = {}
    n_versions = n_models * versions_per_model
    try:
        result["experiments"] = burst(cluster, namespace, "experiments", "Experiment", n_experiments,
                                      lambda i: {"tags": {"bench": "true"}})
        if versions_per_model:
            result["model_versions"] = registered_versions(tracking_uri, namespace, n_models, versions_per_model)
        result["registeredmodels"] = burst(
            cluster, namespace, "registeredmodels", "RegisteredModel", n_models,
            lambda i: {"name": f"bench-{namespace}-{i}", "description": "bench", "tags": {"a": "b"}})
        result["objects"] = n_experiments + n_models + other_objects
        result["rss_mib_after_load"] = round(rss_mib(pid), 1)
        # Retries and trailing events of the burst belong to it, not to the idle operator.
        time.sleep(interval)
        result["idle"] = idle_window(pid, metrics, idle_seconds, interval, n_experiments, n_models, n_versions)
        if restart:
            # The footprint of holding the objects, without the burst's peak: a new process
            # that finds them all at start, as after an upgrade.
            restart_operator()
            pid = operator_pid()
            result["resume_seconds"] = wait_settled(pid)
            time.sleep(interval)
            result["after_restart"] = idle_window(pid, OperatorMetrics(), idle_seconds, interval, n_experiments,
                                                  n_models, n_versions)
    finally:
        # The last scenario: nothing measures after it, so its thousands of objects may go slowly.
        cluster.delete_namespace(namespace, wait_gone=False)
    return result


def apply_while_deleting(cluster: Cluster, n: int) -> dict:
    """N Experiments applied and Ready, then their namespace deleted; at once, one Experiment
    applied in another namespace: seconds until it is Ready, and until the N are gone (the
    operator removes its finalizer from each)."""
    doomed = cluster.namespace("bench-deleting")
    result: dict[str, Any] = {"n": n, "applied": burst(cluster, doomed, "experiments", "Experiment", n,
                                                        lambda i: {"tags": {"bench": "true"}})}
    other = cluster.namespace("bench-meanwhile")
    pid = operator_pid()
    watched = Watched(cluster, other, "experiments", is_ready)
    # Each Experiment: whether the API server has set its deletionTimestamp (the operator has
    # yet to let go); a gone one is no longer kept.
    doomed_watched = Watched(cluster, doomed, "experiments", lambda item: bool(item["metadata"].get("deletionTimestamp")))
    try:
        wait(lambda: doomed_watched.count(lambda _: True) == n, 60, f"the watch of the {n} Experiments", 0.05)
        started, cpu_before = time.monotonic(), cpu_seconds(pid)
        cluster.delete_namespace(doomed, wait_gone=False)
        wait(lambda: n - doomed_watched.count(lambda _: True) + doomed_watched.count() >= n // 10, 600,
             f"{n // 10} Experiments being deleted or gone", 0.05)
        applied = time.monotonic()
        result["applied_after_seconds"] = round(applied - started, 2)
        Objects(cluster.custom, other, "experiments", "Experiment").create("meanwhile", {})
        wait(lambda: watched.count() == 1, 1800, "the Experiment applied meanwhile Ready", 0.05)
        result["ready_after_seconds"] = round(time.monotonic() - applied, 2)
        wait(lambda: not cluster.exists(doomed), 1800, f"namespace {doomed} deleted", 0.5)
        result["deleted_after_seconds"] = round(time.monotonic() - started, 2)
        result["operator_cpu_percent_of_one_core"] = round(
            100 * (cpu_seconds(pid) - cpu_before) / (time.monotonic() - started), 1)
    finally:
        watched.stop()
        doomed_watched.stop()
        cluster.delete_namespace(other, wait_gone=False)
    return result


# --------------------------------------------------------------------------- main


def whole_number(minimum: int, why: str) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum` (`why` says what a smaller one
    would break)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
        if number < minimum:
            raise argparse.ArgumentTypeError(f"{number} is too few: {why}")
        return number

    return parse


size = whole_number(0, "a size is a count of objects, 0 to skip")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--training-runs", type=size, default=50, help="dispatch scenario size (0 skips it)")
    parser.add_argument("--rounds", type=whole_number(1, "at least 1 round is needed for a median"), default=3,
                        help="dispatch scenario rounds (medians are reported)")
    parser.add_argument("--distributed-runs", type=size, default=50,
                        help="distributed dispatch scenario size (0 skips it)")
    parser.add_argument("--distributed-nodes", type=whole_number(2, "a distributed run has at least 2 nodes"),
                        default=4, help="nodes of each run in the distributed dispatch scenario")
    parser.add_argument("--experiments", type=size, default=50)
    parser.add_argument("--models", type=size, default=20)
    parser.add_argument("--versions-per-model", type=size, default=20,
                        help="versions registered for each RegisteredModel's model before it is applied")
    parser.add_argument("--idle-seconds", type=float, default=60)
    parser.add_argument("--closed-idle-seconds", type=float, help="default: two drift intervals")
    parser.add_argument("--closed-training-runs", type=size, default=0,
                        help="TrainingRuns run to Succeeded and kept during the synced-objects scenario")
    parser.add_argument("--apply-while-deleting", type=size, default=0, metavar="N",
                        help="one Experiment applied while N others are being deleted (0 skips it)")
    parser.add_argument("--no-restart", action="store_true", help="keep the running operator")
    parser.add_argument("--closed-namespace", help="keep the closed runs of this namespace (an earlier run's)")
    parser.add_argument("--restart-with-objects", action="store_true",
                        help="after the synced scenario's idle window, restart the operator with every object "
                             "present and measure it again once it has resumed them")
    parser.add_argument("--output", default="latest", help="results/OUTPUT.json and .md (default latest)")
    parser.add_argument("--tracking-server", metavar="URI",
                        help="dispatch against this MLflow server (one the operator may call; default: the "
                             "sandbox's workspace server), e.g. the chart's server on shared stores")
    args = parser.parse_args()

    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                           "kernel": platform.release()},
                               "arguments": vars(args)}
    if not args.no_restart:
        restart_operator()
    cluster, metrics = Cluster(), OperatorMetrics()
    pid = operator_pid()
    interval = drift_interval(pid)
    results["rss_mib_idle_start"] = round(rss_mib(pid), 1)
    tracking_uri = (args.tracking_server
                    or f"http://127.0.0.1:{json.loads((STATE / 'ports.json').read_text())['mlflow']}")
    results["tracking_server"] = tracking_uri
    if args.training_runs:
        rounds = [(floor_dispatch(cluster, args.training_runs, tracking_uri),
                   operator_dispatch(cluster, metrics, args.training_runs, args.closed_idle_seconds or 2 * interval,
                                     tracking_server=args.tracking_server))
                  for _ in range(args.rounds)]
        results.update(dispatch_medians(rounds))
        results["rss_mib_after_runs"] = round(rss_mib(pid), 1)
    if args.distributed_runs:
        nodes = args.distributed_nodes
        rounds = [(floor_dispatch(cluster, args.distributed_runs, tracking_uri, nodes),
                   operator_dispatch(cluster, metrics, args.distributed_runs,
                                     args.closed_idle_seconds or 2 * interval, nodes, args.tracking_server))
                  for _ in range(args.rounds)]
        results["distributed"] = {**dispatch_medians(rounds), "n": args.distributed_runs, "nodes": nodes,
                                  "rss_mib_after_runs": round(rss_mib(pid), 1)}
    closed_namespace = None
    if args.closed_training_runs:
        closed_namespace, results["closed"] = closed_runs(cluster, args.closed_training_runs, args.closed_namespace)
        results["closed"]["rss_mib"] = round(rss_mib(pid), 1)
    if args.experiments or args.models:
        results["synced"] = synced_objects(cluster, metrics, args.experiments, args.models, args.idle_seconds,
                                           interval, args.closed_training_runs, args.restart_with_objects,
                                           tracking_uri, args.versions_per_model)
    if closed_namespace:
        cluster.delete_namespace(closed_namespace, wait_gone=False)
    if args.apply_while_deleting:
        results["while_deleting"] = apply_while_deleting(cluster, args.apply_while_deleting)

    RESULTS.mkdir(parents=True, exist_ok=True)
    results["recorded_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    (RESULTS / f"{args.output}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.output}.md").write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


def idle_row(after: str, idle: dict) -> str:
    versions = (f"{idle['model_versions_read_per_interval']} of {idle['model_versions']}"
                if "model_versions" in idle else "-")
    return (f"| {after} | {idle['seconds']:.0f} | {idle['drift_interval_seconds']:.0f} | "
            f"{idle['operator_cpu_percent_of_one_core']} | {idle['mlflow_calls_per_interval_per_100_experiments']} | "
            f"{idle['mlflow_calls_per_interval_per_100_models']} | {versions} | {idle['kubernetes_writes_per_interval']} | "
            f"{idle['rss_mib']} |")


def writes_table(o: dict, f: dict) -> list[str]:
    """API server writes per run, every client counted (the Job controller's, kwok's too)."""
    od, fd = o["api_server_writes_per_run_dispatch"], f["api_server_writes_per_run_dispatch"]
    oe, fe = o["api_server_writes_per_run_end_to_end"], f["api_server_writes_per_run_end_to_end"]
    keys = sorted(set(od["by_request"]) | set(fd["by_request"]),
                  key=lambda k: (-(od["by_request"].get(k, 0) + fd["by_request"].get(k, 0)), k))
    return [
        "API server writes per run, from the API server's own count (every client: the operator, kopf, the "
        "benchmark, the Job controller, the scheduler, kwok; dry runs apart):", "",
        "| | operator | floor |", "|---|---|---|",
        f"| during dispatch | {od['all']} | {fd['all']} |",
        f"| until every run is closed | {oe['all']} | {fe['all']} |",
        *(f"| during dispatch: {k} | {od['by_request'].get(k, 0)} | {fd['by_request'].get(k, 0)} |" for k in keys),
        "",
    ]


def dispatch_lines(r: dict, title: str, lifecycle_of: str, n: int) -> list[str]:
    """One dispatch scenario's medians, rounds, writes and lifecycle cost."""
    o, f, life = r["operator"], r["floor"], r["operator"]["lifecycle"]
    rounds = r.get("rounds") or []
    each = "; ".join(f"{x['operator_dispatch_seconds']} / {x['floor_dispatch_seconds']} = {x['ratio']}" for x in rounds)
    return [
        f"{title} (8 threads), beside a direct client doing the same work "
        f"with 8 threads (the floor); median of {max(len(rounds), 1)} rounds:", "",
        "| | operator s | floor s | ratio |", "|---|---|---|---|",
        f"| dispatch (every run has its MLflow run and its Job) | {o['dispatch_seconds']} | "
        f"{f['dispatch_seconds']} | {r['dispatch_ratio']} |",
        f"| end to end (every run closed) | {o['end_to_end_seconds']} | {f['end_to_end_seconds']} | "
        f"{round(o['end_to_end_seconds'] / f['end_to_end_seconds'], 2)} |", "",
        *([f"Dispatch in each round, operator / floor s: {each}.", ""] if rounds else []),
        *(writes_table(o, f) if "api_server_writes_per_run_dispatch" in o else []),
        f"Cost of {lifecycle_of}, from the operator's "
        f"metrics (mean of the rounds): {life['mlflow_calls']} MLflow calls, {life['kubernetes_writes']} Kubernetes writes, "
        f"{life['kubernetes_reads']} reads, {life['kubernetes_dry_runs']} dry runs, {life['events']} Events. "
        f"MLflow calls for the {n} closed runs in {o['closed_runs_idle_seconds']:.0f} s afterwards: "
        f"{o['mlflow_calls_for_closed_runs']}. RSS after: {r['rss_mib_after_runs']} MiB.", "",
        "| call per run | count |", "|---|---|",
        *(f"| {op} | {count} |" for op, count in life["by_operation"].items()), "",
    ]


def render_markdown(r: dict) -> str:
    lines = [f"Recorded {r['recorded_at']} on {r['machine']['cpus']} CPUs, Python {r['machine']['python']}; "
             f"operator RSS {r['rss_mib_idle_start']} MiB at start.", ""]
    if "operator" in r:
        lines += dispatch_lines(r, f"**{r['arguments']['training_runs']} TrainingRuns applied at once**",
                                "one TrainingRun lifecycle (create -> Succeeded, no registration)",
                                r["arguments"]["training_runs"])
    if "distributed" in r:
        d = r["distributed"]
        lines += dispatch_lines(
            d, f"**{d['n']} distributed TrainingRuns of {d['nodes']} nodes applied at once** (each an Indexed Job "
            f"of {d['nodes']} pods and a headless Service; the floor creates the same Services, Jobs and runs)",
            f"one distributed TrainingRun lifecycle ({d['nodes']} nodes)", d["n"])
    if "closed" in r:
        c = r["closed"]
        applied = "kept from an earlier run" if c.get("kept_from_an_earlier_run") else "applied at once"
        lines += [f"**{c['n']} TrainingRuns** {applied}, all Succeeded after {c['all_succeeded_after_seconds']}"
                  f" s; kept (closed) during what follows. RSS then: {c['rss_mib']} MiB.", ""]
    if "synced" in r:
        s = r["synced"]
        lines += [
            f"**{s['experiments']['n']} Experiments** Ready after {s['experiments']['all_ready_after_seconds']} s, "
            f"**{s['registeredmodels']['n']} RegisteredModels** after "
            f"{s['registeredmodels']['all_ready_after_seconds']} s (applied at once); {s['objects']} objects in all. "
            f"RSS after the load: {s['rss_mib_after_load']} MiB.",
            *([f"Each RegisteredModel's model had {s['model_versions']['per_model']} versions, registered "
               f"beforehand in {s['model_versions']['registered_in_seconds']} s."] if "model_versions" in s else []),
            "",
            "| idle, one interval after | seconds | drift interval s | CPU % of one core | MLflow calls per interval "
            "per 100 Experiments | per 100 RegisteredModels | model versions read per interval | "
            "Kubernetes writes per interval | RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|",
            idle_row("the load", s["idle"]),
        ]
        if "after_restart" in s:
            lines.append(idle_row(f"a restart with every object present (resumed in {s['resume_seconds']} s)",
                                  s["after_restart"]))
        lines.append("")
    if "while_deleting" in r:
        d = r["while_deleting"]
        lines += [f"**{d['n']} Experiments deleted** (their namespace) after being Ready in "
                  f"{d['applied']['all_ready_after_seconds']} s: an Experiment applied in another namespace "
                  f"once a tenth of them were being deleted ({d['applied_after_seconds']} s in) was Ready after "
                  f"{d['ready_after_seconds']} s; the {d['n']} were gone after {d['deleted_after_seconds']} s "
                  f"(operator CPU {d['operator_cpu_percent_of_one_core']} % of one core meanwhile).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
