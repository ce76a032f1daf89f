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
    LABEL_RUN_ID,
    LABEL_TRAINING_RUN,
    TERMINAL_PHASES,
    TrainingRunSpec,
    TrainingRunStatus,
)
from mlflow_operator.api.trainingsweep import TrainingSweepStatus
from mlflow_operator.cluster.snapshots import JobSnapshot
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


def _with_env(container: dict[str, Any], env: list[dict[str, Any]]) -> dict[str, Any]:
    ours = {e["name"] for e in env} | set(OPERATOR_ENV)
    theirs = [e for e in container.get("env") or [] if e.get("name") not in ours]
    # Ours first, so the template's own env entries can use $(MLFLOW_PARAM_...) too.
    return {**container, "env": env + theirs}


def build_job(
    spec: TrainingRunSpec, identity: ObjectIdentity, run_id: str, experiment_id: str, tracking_uri: str,
    credentials: CredentialSource | None,
) -> dict[str, Any]:
    """The batch/v1 Job for this TrainingRun, owned by it, named after it."""
    template = copy.deepcopy(spec.template)
    metadata = template.setdefault("metadata", {})
    labels = {LABEL_TRAINING_RUN: identity.name, LABEL_RUN_ID: run_id}
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    pod_spec = template.setdefault("spec", {})
    pod_spec.setdefault("restartPolicy", "Never")
    env = job_env(tracking_uri, experiment_id, run_id, spec.params, credentials)
    pod_spec["containers"] = [_with_env(c, env) for c in pod_spec.get("containers") or []]
    job_spec: dict[str, Any] = {"backoffLimit": spec.backoff_limit, "template": template}
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
            "labels": {**labels, "app.kubernetes.io/managed-by": "mlflow-operator"},
            "annotations": {"mlflow.operator.dev/experiment-id": experiment_id},
            "ownerReferences": [{
                "apiVersion": API_VERSION,
                "kind": identity.kind,
                "name": identity.name,
                "uid": identity.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }],
        },
        "spec": job_spec,
    }


def job_shape(spec: TrainingRunSpec, namespace: str, experiment_id: str, tracking_uri: str,
              credentials: CredentialSource | None) -> str:
    """A digest of the Job a run would get, without what differs between runs of one
    template (the object's name and uid, the params' values): runs of one shape get the same
    answer from a dry run of their Job. The name is left out because the API server checks
    it on the TrainingRun already (a DNS name of at most 63 characters, as for a Job)."""
    same_values = spec.model_copy(update={"params": dict.fromkeys(spec.params, "")})
    identity = ObjectIdentity(kind="TrainingRun", namespace=namespace, name="shape", uid="shape")
    body = build_job(same_values, identity, PLACEHOLDER_RUN_ID, experiment_id, tracking_uri, credentials)
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------- job state


@dataclass(frozen=True)
class JobOutcome:
    """How a Job ended, as recorded in status before the run is closed in MLflow."""

    phase: str  # Succeeded | Failed
    reason: str
    message: str
    completion_time: dt.datetime


def job_outcome(job: JobSnapshot, job_name: str, pod_reasons: list[str]) -> JobOutcome:
    now = dt.datetime.now(dt.timezone.utc)
    if job.finished and job.finished[0] == "Complete":
        return JobOutcome("Succeeded", Reason.SUCCEEDED, f"Job {job_name} completed", job.completion_time or now)
    if job.finished:
        return JobOutcome("Failed", job.finished[1] or Reason.JOB_FAILED, failure_message(job, pod_reasons),
                          job.completion_time or now)
    return JobOutcome("Failed", Reason.JOB_DELETED, f"Job {job_name} was deleted before it finished", now)


def phase_of(job: JobSnapshot, previous_phase: str | None = None) -> str:
    """Pending until a pod is ready, then Running until the Job's final condition. A Job
    between pods (a retry, or the moment between a pod ending and Complete) stays Running."""
    if job.finished:
        return "Succeeded" if job.finished[0] == "Complete" else "Failed"
    if job.ready > 0 or job.succeeded > 0 or job.failed > 0 or previous_phase == "Running":
        return "Running"
    return "Pending"


# Outcomes that cut the run short rather than let the training code fail.
CUT_SHORT_REASONS = (Reason.JOB_DELETED, Reason.KILLED)


def final_run_status(phase: str, reason: str = "") -> str:
    """MLflow's run status from the Job's outcome, never from what the container reported."""
    if phase == "Succeeded":
        return "FINISHED"
    return "KILLED" if reason in CUT_SHORT_REASONS else "FAILED"


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
