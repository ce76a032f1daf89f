"""TrainingRun decisions: the Job to create, what its state means, how to close the run.
No I/O: the reconciler gathers state and executes."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

from mlflow_operator.api.common import API_VERSION, NOTE_TAG, ObjectIdentity
from mlflow_operator.api.trainingrun import (
    DISTRIBUTED_ENV,
    DISTRIBUTED_ENV_PREFIX,
    LABEL_RUN_ID,
    LABEL_TRAINING_RUN,
    TERMINAL_PHASES,
    DistributedSpec,
    NodeCounts,
    TrainingRunSpec,
    TrainingRunStatus,
)
from mlflow_operator.api.trainingsweep import ANNOTATION_STOP, TrainingSweepStatus
from mlflow_operator.cluster.snapshots import COMPLETION_INDEX_ANNOTATION, JobSnapshot, PodSnapshot
from mlflow_operator.logic.conditions import ReconcileProblem, stalled
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.tracking.entities import LoggedModelInfo, RunInfo
from mlflow_operator.tracking.servers import Credentials

PARAM_ENV_PREFIX = "MLFLOW_PARAM_"
# Environment the operator owns in every training container; a template's own entries
# with these names are replaced, so the wiring cannot be broken by accident.
OPERATOR_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "MLFLOW_DISABLE_TELEMETRY",
                "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                "MLFLOW_TRACKING_AUTH", "MLFLOW_WORKSPACE")
PLACEHOLDER_RUN_ID = "0" * 32
# Holds a training Job until the operator has recorded its outcome, so that a TTL or a
# `kubectl delete job` while the operator is down cannot lose it.
JOB_FINALIZER = "mlflow.operator.dev/job-outcome"


def param_env_name(key: str) -> str:
    """`learning-rate` -> `MLFLOW_PARAM_LEARNING_RATE`: a valid, $(VAR)-expandable name."""
    return PARAM_ENV_PREFIX + re.sub(r"[^A-Za-z0-9_]", "_", key).upper()


def param_env(params: dict[str, str]) -> dict[str, str]:
    """Env var name -> value for every param; two keys mapping to one name are a spec error."""
    result: dict[str, str] = {}
    origin: dict[str, str] = {}
    for key in sorted(params):
        name = param_env_name(key)
        if name in result:
            raise ReconcileProblem(stalled(
                Reason.INVALID_SPEC,
                f"params {origin[name]!r} and {key!r} both become env var {name}; rename one of them",
            ))
        result[name], origin[name] = params[key], key
    return result


def run_name(spec: TrainingRunSpec, identity: ObjectIdentity) -> str:
    return spec.run_name or identity.name


def run_tags(spec: TrainingRunSpec, identity: ObjectIdentity, image: str | None) -> dict[str, str]:
    tags = {**spec.tags, **identity.tags(), "k8s.job": identity.name}
    if spec.description:
        tags[NOTE_TAG] = spec.description
    if image:
        tags["k8s.image"] = image
    return tags


def first_image(template: dict[str, Any]) -> str | None:
    containers = ((template.get("spec") or {}).get("containers")) or []
    return containers[0].get("image") if containers else None


def first_container_name(template: dict[str, Any]) -> str | None:
    """The training container: the first one (as for k8s.image and the MLflow environment)."""
    containers = ((template.get("spec") or {}).get("containers")) or []
    return containers[0].get("name") if containers else None


@dataclass(frozen=True)
class CredentialSource:
    """How a Job's containers authenticate to MLflow: from a Secret, by reference only, or
    (a workspace server) as the pod's own ServiceAccount, with no static credential."""

    secret_name: str | None
    keys: tuple[tuple[str, str], ...]  # (env var, secret key)
    service_account: bool = False

    @classmethod
    def for_secret(cls, secret_name: str, credentials: Credentials) -> "CredentialSource":
        if credentials.token:
            return cls(secret_name, (("MLFLOW_TRACKING_TOKEN", "token"),))
        return cls(secret_name, (("MLFLOW_TRACKING_USERNAME", "username"), ("MLFLOW_TRACKING_PASSWORD", "password")))

    @classmethod
    def for_service_account(cls) -> "CredentialSource":
        """MLflow's client sends the pod's ServiceAccount token and names the namespace as
        the workspace (MLFLOW_TRACKING_AUTH=kubernetes-namespaced), re-reading it as it rotates."""
        return cls(None, (), service_account=True)


# MLflow's client auth provider that sends the pod's ServiceAccount token and namespace.
SERVICE_ACCOUNT_AUTH = "kubernetes-namespaced"


def pod_service_account(spec: TrainingRunSpec) -> str:
    """The ServiceAccount the training pods run as."""
    pod_spec = (spec.template or {}).get("spec") or {}
    return str(pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount") or "default")


def service_account_token_problem(spec: TrainingRunSpec) -> str | None:
    """Why pods of this template cannot authenticate as their ServiceAccount, or None."""
    pod_spec = (spec.template or {}).get("spec") or {}
    if pod_spec.get("automountServiceAccountToken") is False:
        return ("spec.template sets automountServiceAccountToken: false, but on this tracking server training pods "
                "authenticate with their ServiceAccount token; remove it")
    return None


def job_env(tracking_uri: str, experiment_id: str, run_id: str, params: dict[str, str],
            credentials: CredentialSource | None) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "MLFLOW_TRACKING_URI", "value": tracking_uri},
        {"name": "MLFLOW_EXPERIMENT_ID", "value": experiment_id},
        {"name": "MLFLOW_RUN_ID", "value": run_id},
        {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
    ]
    if credentials and credentials.service_account:
        env.append({"name": "MLFLOW_TRACKING_AUTH", "value": SERVICE_ACCOUNT_AUTH})
    elif credentials:
        env += [
            {"name": var, "valueFrom": {"secretKeyRef": {"name": credentials.secret_name, "key": key}}}
            for var, key in credentials.keys
        ]
    env += [{"name": name, "value": value} for name, value in sorted(param_env(params).items())]
    return env


# --------------------------------------------------------------------------- distributed runs

# Set by the Job controller on its pods: the Service selects the ranks of this Job by it.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
HOSTNAME_MAX = 63


def rendezvous_host(name: str) -> str:
    """Rank 0's stable name: an Indexed Job's pod `<job>-<index>` in the headless Service
    `<name>` (pods resolve `<host>.<service>` through their namespace's search domain)."""
    return f"{name}-0.{name}"


def distributed_env(name: str, distributed: DistributedSpec) -> list[dict[str, Any]]:
    """What every rank needs to find the others (torch.distributed's env:// and torchrun's
    PET_* variables): the node rank comes from the pod's completion index."""
    rank = {"valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}}}
    master = rendezvous_host(name)
    port = str(distributed.port)
    return [
        {"name": "NODE_RANK", **rank},
        {"name": "RANK", **rank},
        {"name": "WORLD_SIZE", "value": str(distributed.nodes * distributed.processes_per_node)},
        {"name": "MASTER_ADDR", "value": master},
        {"name": "MASTER_PORT", "value": port},
        {"name": "PET_NNODES", "value": str(distributed.nodes)},
        {"name": "PET_NPROC_PER_NODE", "value": str(distributed.processes_per_node)},
        {"name": "PET_NODE_RANK", **rank},
        {"name": "PET_MASTER_ADDR", "value": master},
        {"name": "PET_MASTER_PORT", "value": port},
        # MLflow's system metrics monitor logs as system/node-<rank>/... with this.
        {"name": "MLFLOW_SYSTEM_METRICS_NODE_ID", "value": "node-$(NODE_RANK)"},
    ]


def distributed_problems(spec: TrainingRunSpec, name: str) -> list[str]:
    """Why a distributed spec cannot work as written (the CRD refuses the same at admission)."""
    if spec.distributed is None:
        return []
    problems = []
    last_host = f"{name}-{spec.distributed.nodes - 1}"
    if len(last_host) > HOSTNAME_MAX:
        problems.append(f"the pod of the last node would be named {last_host!r}, longer than {HOSTNAME_MAX} "
                        "characters (an Indexed Job's pods are <name>-<rank>); use a shorter name or fewer nodes")
    for container in (spec.template.get("spec") or {}).get("containers") or []:
        for entry in container.get("env") or []:
            env_name = str(entry.get("name", ""))
            if env_name in DISTRIBUTED_ENV or env_name.startswith(DISTRIBUTED_ENV_PREFIX):
                problems.append(f"container {container.get('name')!r} sets {env_name}, which the operator sets for "
                                "every rank of a distributed run; remove it from the template")
    return problems


def build_service(spec: TrainingRunSpec, identity: ObjectIdentity) -> dict[str, Any] | None:
    """The headless Service of a distributed run, owned by the TrainingRun: it gives every
    rank's pod a DNS name (`<name>-<rank>.<name>`) from the moment it exists, ready or not."""
    if spec.distributed is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": identity.name,
            "namespace": identity.namespace,
            "labels": {LABEL_TRAINING_RUN: identity.name, "app.kubernetes.io/managed-by": "mlflow-operator"},
            "ownerReferences": [_controller_reference(identity)],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {LABEL_TRAINING_RUN: identity.name, JOB_NAME_LABEL: identity.name},
            "ports": [{"name": "rendezvous", "port": spec.distributed.port, "targetPort": spec.distributed.port,
                       "protocol": "TCP"}],
        },
    }


def _controller_reference(identity: ObjectIdentity) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": identity.kind, "name": identity.name, "uid": identity.uid,
            "controller": True, "blockOwnerDeletion": True}


def index_set(indexes: str, limit: int = 100_000) -> set[int]:
    """The indexes an Indexed Job's list names ("1,3-5" -> {1, 3, 4, 5}), at most `limit`."""
    found: set[int] = set()
    for part in filter(None, indexes.split(",")):
        first, _, last = part.partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            continue
        found.update(range(low, min(high, low + limit - len(found) - 1) + 1))
        if len(found) >= limit:
            break
    return found


def pod_failure_reasons(pods: list[PodSnapshot], failed_indexes: str = "") -> list[str]:
    """Why the Job failed, pod by pod: for a distributed run, each failure names its rank,
    and the ranks the Job counted as failed come first (the others were stopped after them)."""
    failed_ranks = index_set(failed_indexes)
    reasons: list[tuple[bool, str, str]] = []
    for pod in pods:
        rank = f"rank {pod.completion_index}: " if pod.completion_index is not None else ""
        for exit in pod.failed_containers:
            reasons.append((pod.completion_index not in failed_ranks, pod.created or "",
                            f"{rank}pod {pod.name} container {exit.container} exited with code "
                            f"{exit.exit_code} ({exit.reason})"))
    return [text for _, _, text in sorted(reasons)]


def node_counts(job: JobSnapshot) -> NodeCounts:
    """A distributed run's nodes by phase, from its Job's status alone (no pod reads): ready
    pods run, created or not, the rest of an active Job's ranks wait; after the Job's end the
    ranks it stopped are counted as stopped in the summary."""
    total = job.completions
    failed = len(index_set(job.failed_indexes)) if job.failed_indexes else min(job.failed, total) if job.finished else 0
    succeeded = min(job.succeeded, total)
    running = 0 if job.ended else min(job.ready, total)
    pending = 0 if job.ended else max(0, total - succeeded - failed - running)
    parts = [f"{count} {word}" for count, word in
             ((running, "running"), (pending, "pending"), (succeeded, "succeeded"), (failed, "failed")) if count]
    stopped = total - succeeded - failed - running - pending
    if stopped > 0:
        parts.append(f"{stopped} stopped")
    return NodeCounts(total=total, pending=pending, running=running, succeeded=succeeded, failed=failed,
                      summary=f"{total} nodes: " + ", ".join(parts or ["none started"]))


def _with_env(container: dict[str, Any], env: list[dict[str, Any]]) -> dict[str, Any]:
    ours = {e["name"] for e in env} | set(OPERATOR_ENV)
    theirs = [e for e in container.get("env") or [] if e.get("name") not in ours]
    # Ours first, so the template's own env entries can use $(MLFLOW_PARAM_...) too.
    return {**container, "env": env + theirs}


def build_job(
    spec: TrainingRunSpec, identity: ObjectIdentity, run_id: str, experiment_id: str, tracking_uri: str,
    credentials: CredentialSource | None, queue_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The batch/v1 Job for this TrainingRun, owned by it, named after it. A distributed run
    is an Indexed Job of one pod per node in the run's headless Service (build_service)."""
    template = copy.deepcopy(spec.template)
    metadata = template.setdefault("metadata", {})
    labels = {LABEL_TRAINING_RUN: identity.name, LABEL_RUN_ID: run_id}
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    pod_spec = template.setdefault("spec", {})
    pod_spec.setdefault("restartPolicy", "Never")
    env = job_env(tracking_uri, experiment_id, run_id, spec.params, credentials)
    job_spec: dict[str, Any] = {"backoffLimit": spec.backoff_limit, "template": template}
    if spec.distributed is not None:
        env += distributed_env(identity.name, spec.distributed)
        pod_spec["subdomain"] = identity.name
        nodes = spec.distributed.nodes
        job_spec.update(completionMode="Indexed", completions=nodes, parallelism=nodes)
        if pod_spec["restartPolicy"] == "Never":
            # Each rank has its own retries; one rank out of them fails the whole Job (and
            # the Job controller stops the other ranks) at once.
            del job_spec["backoffLimit"]
            job_spec.update(backoffLimitPerIndex=spec.backoff_limit, maxFailedIndexes=0)
    pod_spec["containers"] = [_with_env(c, env) for c in pod_spec.get("containers") or []]
    if spec.suspend:
        job_spec["suspend"] = True
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": identity.name,
            "namespace": identity.namespace,
            "finalizers": [JOB_FINALIZER],
            "labels": {**(queue_labels or {}), **labels, "app.kubernetes.io/managed-by": "mlflow-operator"},
            "annotations": {"mlflow.operator.dev/experiment-id": experiment_id},
            "ownerReferences": [_controller_reference(identity)],
        },
        "spec": job_spec,
    }


def job_shape(spec: TrainingRunSpec, namespace: str, experiment_id: str, tracking_uri: str,
              credentials: CredentialSource | None, queue_labels: dict[str, str] | None = None) -> str:
    """A digest of the Job a run would get, without what differs between runs of one
    template (the object's name and uid, the params' values): runs of one shape get the same
    answer from a dry run of their Job. The name is left out because the API server checks
    it on the TrainingRun already (a DNS name of at most 63 characters, as for a Job)."""
    same_values = spec.model_copy(update={"params": dict.fromkeys(spec.params, "")})
    identity = ObjectIdentity(kind="TrainingRun", namespace=namespace, name="shape", uid="shape")
    body = build_job(same_values, identity, PLACEHOLDER_RUN_ID, experiment_id, tracking_uri, credentials,
                     queue_labels)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- job state


@dataclass(frozen=True)
class JobOutcome:
    """How a Job ended, as recorded in status before the run is closed in MLflow."""

    phase: str  # Succeeded | Failed
    reason: str
    message: str
    completion_time: dt.datetime


def job_outcome(job: JobSnapshot, job_name: str, pod_reasons: list[str], stop_reason: str | None = None) -> JobOutcome:
    """How the Job ended; a Job deleted before it finished because its sweep stopped the
    trial (`stop_reason`, the trial's stop annotation) ended it EarlyStopped."""
    now = dt.datetime.now(dt.timezone.utc)
    if job.finished and job.finished[0] == "Complete":
        return JobOutcome("Succeeded", Reason.SUCCEEDED, f"Job {job_name} completed", job.completion_time or now)
    if job.finished:
        return JobOutcome("Failed", job.finished[1] or Reason.JOB_FAILED, failure_message(job, pod_reasons),
                          job.completion_time or now)
    if stop_reason:
        return JobOutcome("EarlyStopped", Reason.EARLY_STOPPED, f"stopped by its sweep: {stop_reason}", now)
    return JobOutcome("Failed", Reason.JOB_DELETED, f"Job {job_name} was deleted before it finished", now)


# The longest stop reason an annotation may give (it reaches a tag, status and an Event).
STOP_REASON_MAX_CHARS = 500


def stop_reason(metadata: Any) -> str | None:
    """Why the trial's sweep stopped it (its stop annotation), bounded; None if not stopped."""
    value = ((metadata or {}).get("annotations") or {}).get(ANNOTATION_STOP)
    return str(value)[:STOP_REASON_MAX_CHARS] if value else None


def phase_of(job: JobSnapshot, previous_phase: str | None = None) -> str:
    """Pending until a pod is ready, then Running until the Job's final condition. A Job
    between pods (a retry, or the moment between a pod ending and Complete) stays Running;
    a suspended Job with no pod left (held, or preempted by a queue) is Pending."""
    if job.finished:
        return "Succeeded" if job.finished[0] == "Complete" else "Failed"
    if job.suspended and job.active == 0:
        return "Pending"
    if job.ready > 0 or job.succeeded > 0 or job.failed > 0 or previous_phase == "Running":
        return "Running"
    return "Pending"


# Outcomes that cut the run short rather than let the training code fail.
CUT_SHORT_REASONS = (Reason.JOB_DELETED, Reason.KILLED)


def final_run_status(phase: str, reason: str = "") -> str:
    """MLflow's run status from the Job's outcome, never from what the container reported."""
    if phase == "Succeeded":
        return "FINISHED"
    return "KILLED" if reason in CUT_SHORT_REASONS or phase == "EarlyStopped" else "FAILED"


def failure_message(job: JobSnapshot, pod_reasons: list[str]) -> str:
    reason, message = (job.finished[1], job.finished[2]) if job.finished else ("", "")
    text = f"Job failed: {reason or 'Failed'}"
    if message:
        text += f" ({message})"
    if pod_reasons:
        text += "; " + "; ".join(pod_reasons[:3])
    return text


# --------------------------------------------------------------------------- runs and models


def canonical_run(runs: list[RunInfo], in_job: str | None = None) -> tuple[RunInfo | None, list[RunInfo]]:
    """The run this TrainingRun owns and any duplicates (a retried create_run POST can
    create two). The run a Job was already started for wins; otherwise the oldest active
    run tagged with the object's uid."""
    active = [r for r in runs if r.lifecycle_stage == "active"]
    if not active:
        return None, []
    ordered = sorted(active, key=lambda r: (r.run_id != in_job, r.start_time or 0, r.run_id))
    return ordered[0], ordered[1:]


def pick_logged_model(models: list[LoggedModelInfo], artifact_path: str) -> LoggedModelInfo | None:
    """The model the run logged under `artifact_path` (MLflow 3: the logged model's name);
    the newest if the training code logged it more than once."""
    named = [m for m in models if m.name == artifact_path]
    if not named:
        return None
    return max(named, key=lambda m: (m.creation_timestamp or 0, m.model_id))


def primary_metric_text(metrics: dict[str, float], name: str | None) -> str | None:
    if not name or name not in metrics:
        return None
    return f"{name}={metrics[name]:.6g}"


# --------------------------------------------------------------------------- stages

Stage = Literal["closed", "closing", "job_ended", "job_lost", "job_running", "starting"]
CLOSED_RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")


# The status of an object that owns a run: a TrainingRun, or a TrainingSweep (its parent run).
RunStatus = TrainingRunStatus | TrainingSweepStatus


def is_closed(status: RunStatus, registers_model: bool) -> bool:
    """Finished, and nothing left to do in MLflow for it (a TrainingRun, or a sweep's parent run)."""
    if status.phase not in TERMINAL_PHASES or status.run_status not in CLOSED_RUN_STATUSES:
        return False
    return status.phase != "Succeeded" or not registers_model or status.model_version is not None


def stage_of(status: TrainingRunStatus, job: JobSnapshot | None, registers_model: bool) -> Stage:
    """Where a TrainingRun is in its lifecycle, from its status and its Job (None: no Job,
    or not read). Each stage has one step function in the reconciler.

    closed       nothing left to do;
    closing      the Job's outcome is recorded: close the run in MLflow, register the model;
    job_ended    this run's Job finished or is being deleted: record its outcome first;
    job_lost     this run's Job is gone (or replaced) without its outcome recorded: cut short;
    job_running  this run's Job is pending or running;
    starting     no run, or no Job of this run recorded yet: create what is missing.
    """
    if is_closed(status, registers_model):
        return "closed"
    run_id, job_uid = status.run_id, status.job_uid
    if run_id and (status.job_outcome is not None or status.phase in TERMINAL_PHASES):
        return "closing"
    if run_id and job_uid and job is not None and job.uid == job_uid:
        return "job_ended" if job.ended else "job_running"
    if run_id and job_uid:
        return "job_lost"
    return "starting"
