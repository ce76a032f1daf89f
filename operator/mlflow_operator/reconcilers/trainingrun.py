"""TrainingRun reconciler: experiment -> MLflow run -> Job -> close the run -> register.

Level-based: every trigger (create, resume, a Job event, the timer) looks at what exists
and takes the next step, so a restart at any point neither loses nor duplicates work.
One TrainingRun has exactly one MLflow run (found again by its `k8s.uid` tag) and at most
one Job (named after the object, owned by it).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from mlflow_operator.api.common import (
    TAG_UID,
    ObjectIdentity,
)
from mlflow_operator.api.trainingrun import LABEL_RUN_ID, JobOutcomeStatus, TrainingRunSpec, TrainingRunStatus
from mlflow_operator.cluster.snapshots import JobSnapshot, PodSnapshot
from mlflow_operator.gateways.kubernetes import KubernetesError
from mlflow_operator.logic import provenance, timestamps
from mlflow_operator.logic import trainingrun as logic
from mlflow_operator.logic.conditions import (
    Outcome,
    ReconcileProblem,
    progressing,
    ready,
    stalled,
)
from mlflow_operator.logic.queueing import KUEUE_QUEUE_LABEL, queue_labels
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.logic.trainingsweep import trial_run_tags
from mlflow_operator.reconcilers import common
from mlflow_operator.reconcilers.common import Context
from mlflow_operator.reconcilers.runs import (
    DUPLICATE_TAG,
    Resolved,
    no_run_can_exist,
    outcome_of_closed,
    owned_run,
    owned_run_to_close,
    register_model,
    resolve_experiment,
)
from mlflow_operator.scheduling.policy import Schedule
from mlflow_operator.tracking.entities import InvalidRequest, RunInfo

# On the run of a trial its sweep stopped: why (the trial's stop annotation).
STOPPED_TAG = "mlflow.operator.dev/stopped"
# Set by the Job controller on the pods it creates (and used by its selector).
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"


def parse_spec(raw_spec: Any) -> TrainingRunSpec:
    return common.parse_spec(_parse_training_run, raw_spec)


def _parse_training_run(raw_spec: Any) -> TrainingRunSpec:
    spec = TrainingRunSpec.parse(raw_spec)
    logic.param_env(spec.params)  # Stalled on colliding env names
    return spec


def is_closed(spec: TrainingRunSpec, status: TrainingRunStatus) -> bool:
    """Finished, and nothing left to do in MLflow for it."""
    return logic.is_closed(status, registers_model=spec.register_model is not None)


async def reconcile_training_run(ctx: Context[TrainingRunSpec, TrainingRunStatus]) -> Outcome:
    """The step of the stage the run is in (logic.stage_of), scheduled as the step declares
    (scheduling.policy); the drift check refreshes live metrics while it runs."""
    services, identity, spec = ctx.services, ctx.identity, ctx.spec
    registers_model = spec.register_model is not None
    if ctx.status.run_id:
        services.caches.run_attempts.discard(identity.uid)  # recorded: memory not needed any more
    job = await _observed_job(ctx, registers_model)
    step = STEPS[logic.stage_of(ctx.status, job, registers_model)]
    if await services.dispatcher.waited(step.schedule, ctx.status.tracking_uri):
        job = await _observed_job(ctx, registers_model)  # as it is after the wait
        step = STEPS[logic.stage_of(ctx.status, job, registers_model)]
    with services.dispatcher.scheduled(step.schedule):
        outcome = await step.run(ctx, job)
    if job is not None and job.uid == ctx.status.job_uid:
        services.caches.handled_jobs.record(identity.uid, services.caches.handled_jobs.signature(job, logic.phase_of(job)))
    return outcome


async def _observed_job(ctx: Context[TrainingRunSpec, TrainingRunStatus], registers_model: bool) -> JobSnapshot | None:
    """The run's Job as the watch last saw it. When status names a Job the watch has not
    seen (yet), it is read, so a Job is never taken for lost on a watch's delay."""
    kube, identity = ctx.services.kube, ctx.identity
    job = await ctx.services.caches.watched.job(kube, identity.namespace, identity.name)
    known = ctx.status.job_uid
    if known and (job is None or job.uid != known) and not logic.is_closed(ctx.status, registers_model):
        job = await kube.get_job(identity.namespace, identity.name)
    return job


async def _let_deleted_job_go(ctx: Context[TrainingRunSpec, TrainingRunStatus], job: JobSnapshot | None) -> None:
    """The Job's outcome is recorded: if the Job is being deleted (a TTL, by hand), its
    finalizer has done its work. Otherwise it stays until the TrainingRun is deleted."""
    if job is not None and job.uid == ctx.status.job_uid and job.deleting \
            and logic.JOB_FINALIZER in job.finalizers:
        await ctx.services.kube.remove_job_finalizer(ctx.identity.namespace, ctx.identity.name, logic.JOB_FINALIZER)


async def _closed(ctx: Context[TrainingRunSpec, TrainingRunStatus], job: JobSnapshot | None) -> Outcome:
    await _let_deleted_job_go(ctx, job)
    return outcome_of_closed(ctx.status)


async def _closing(ctx: Context[TrainingRunSpec, TrainingRunStatus], job: JobSnapshot | None) -> Outcome:
    """The Job's outcome is recorded: what is left happens in MLflow and needs no Job (but a
    stopped trial's run is closed only once its Job, and so its pods, are gone)."""
    await _let_deleted_job_go(ctx, job)
    if _stopped_job_still_there(ctx, job):
        return _waiting_for_stopped_pods(ctx)
    return await _finish(ctx, await _resolve(ctx))


def _stopped_job_still_there(ctx: Context[TrainingRunSpec, TrainingRunStatus], job: JobSnapshot | None) -> bool:
    """A trial its sweep stopped whose Job is still being deleted (in the foreground: its
    pods first). Closing the run now would race the training code, which may still end the
    run FINISHED itself before its container is stopped."""
    outcome = ctx.status.job_outcome
    return outcome is not None and outcome.phase == "EarlyStopped" and job is not None \
        and job.uid == ctx.status.job_uid and not ctx.status.run_status


def _waiting_for_stopped_pods(ctx: Context[TrainingRunSpec, TrainingRunStatus]) -> Outcome:
    return progressing(Reason.EARLY_STOPPED, f"stopped by its sweep; waiting for the pods of Job {ctx.identity.name} "
                       "to end before its MLflow run is closed KILLED", awaited=True, expected=True)


async def _job_ended_step(ctx: Context[TrainingRunSpec, TrainingRunStatus], job: JobSnapshot | None) -> Outcome:
    assert job is not None
    return await _job_ended(ctx, job)


async def _job_running_step(ctx: Context[TrainingRunSpec, TrainingRunStatus], job: JobSnapshot | None) -> Outcome:
    assert job is not None
    return await _in_progress(ctx, job)


async def _job_lost_step(ctx: Context[TrainingRunSpec, TrainingRunStatus], job: JobSnapshot | None) -> Outcome:
    return await _job_lost(ctx, await _resolve(ctx))


async def _starting(ctx: Context[TrainingRunSpec, TrainingRunStatus], job: JobSnapshot | None) -> Outcome:
    """Create what is missing, the run before the Job (its id is recorded in between), then
    take the step of the stage the run is in with its Job (running, or ended already)."""
    stopped = logic.stop_reason(ctx.metadata)
    if stopped and not ctx.status.run_id:
        # Its sweep stopped it before it started: nothing is created.
        ctx.record(TrainingRunStatus(phase="EarlyStopped", completion_time=timestamps.now_rfc3339()))
        return stalled(Reason.EARLY_STOPPED, f"stopped by its sweep before it started: {stopped}")
    resolved = await _resolve(ctx)
    with ctx.services.dispatcher.starts.starting(resolved.target.uri):
        run = await _ensure_run(ctx, resolved, job)
        job = await _ensure_job(ctx, resolved, run, job)
    stage = logic.stage_of(ctx.status, job, ctx.spec.register_model is not None)
    assert stage in ("job_running", "job_ended"), stage
    return await STEPS[stage].run(ctx, job)


@dataclass(frozen=True)
class Step:
    """What one stage does, and how it is scheduled when the operator is busy."""

    run: Callable[[Context[TrainingRunSpec, TrainingRunStatus], JobSnapshot | None], Awaitable[Outcome]]
    schedule: Schedule = "normal"


STEPS: dict[logic.Stage, Step] = {
    "closed": Step(_closed),
    "closing": Step(_closing, "bookkeeping"),
    "job_ended": Step(_job_ended_step, "bookkeeping"),
    "job_lost": Step(_job_lost_step, "bookkeeping"),
    "job_running": Step(_job_running_step, "bookkeeping"),
    "starting": Step(_starting, "start"),
}


# --------------------------------------------------------------------------- experiment


async def _resolve(ctx: Context[TrainingRunSpec, TrainingRunStatus]) -> Resolved:
    return await resolve_experiment(ctx)


# --------------------------------------------------------------------------- run


def _job_run_id(job: JobSnapshot | None, identity: ObjectIdentity) -> str | None:
    """The MLflow run a Job this object controls says it was started for (its label): a
    claim, used only once the run's tags confirm it."""
    if job is None or not job.controlled_by(identity.uid):
        return None
    return job.labels.get(LABEL_RUN_ID)


async def _ensure_run(ctx: Context[TrainingRunSpec, TrainingRunStatus], resolved: Resolved, job: JobSnapshot | None) -> RunInfo:
    mlflow, target, identity = ctx.services.mlflow, resolved.target, ctx.identity
    known = ctx.status.run_id
    if known:
        # A recorded run id always wins, once its tags confirm it.
        run = await owned_run(ctx.services, resolved, known, identity)
    else:
        in_job = _job_run_id(job, identity)
        runs = [] if in_job is None and no_run_can_exist(ctx) else await mlflow.find_runs_by_tag(
            target, resolved.experiment_id, TAG_UID, identity.uid)
        found, duplicates = logic.canonical_run(runs, in_job)
        if found is not None:
            run = found
        else:
            await _check_job_template(ctx, resolved)
            ctx.services.caches.run_attempts.add(identity.uid)
            run = await mlflow.create_run(
                target, resolved.experiment_id, logic.run_name(ctx.spec, identity),
                {**logic.run_tags(ctx.spec, identity, logic.first_image(ctx.spec.template)),
                 **provenance.source_run_tags(ctx.metadata), **trial_run_tags(ctx.metadata)},
                start_time_ms=int(time.time() * 1000),
            )
            # A POST retried by the client can leave a twin: closing the run finds it.
        # Written with the Job's uid: until then, the run is found again by its uid tag,
        # and once the Job exists, by the run id the Job carries. The write fails (409) if
        # another reconcile recorded a run since this one read.
        ctx.record(TrainingRunStatus(
            phase=ctx.status.phase or "Pending",
            run_id=run.run_id,
            experiment_id=resolved.experiment_id,
            experiment_name=resolved.experiment_name,
            tracking_uri=resolved.target.uri,
            job_name=identity.name,
            url=target.run_url(resolved.experiment_id, run.run_id),
        ))
        for duplicate in duplicates:
            await mlflow.set_run_tag(target, duplicate.run_id, DUPLICATE_TAG, run.run_id)
            await mlflow.delete_run(target, duplicate.run_id)
            ctx.event("Normal", "DuplicateRunDeleted",
                           f"deleted duplicate MLflow run {duplicate.run_id} (kept {run.run_id})")
    missing = {k: v for k, v in ctx.spec.params.items() if run.params.get(k) != v}
    if missing:
        try:
            await mlflow.log_params_and_tags(target, run.run_id, missing, {})
        except InvalidRequest as error:
            raise ReconcileProblem(stalled(Reason.INVALID_SPEC, f"MLflow rejected the params: {error}")) from None
    return run


# --------------------------------------------------------------------------- job


def _credential_source(ctx: Context[TrainingRunSpec, TrainingRunStatus], resolved: Resolved) -> logic.CredentialSource | None:
    if resolved.target.workspace is not None:
        return logic.CredentialSource.for_service_account()
    if not resolved.secret_name:
        return None
    return logic.CredentialSource.for_secret(resolved.secret_name, resolved.target.credentials)


def _job_rejected(error: KubernetesError, verb: str) -> ReconcileProblem | None:
    if error.status in (400, 422):
        return ReconcileProblem(stalled(Reason.INVALID_TEMPLATE, f"the Job {verb} rejected: {error.message}"))
    if error.status == 403:
        return ReconcileProblem(progressing(Reason.JOB_REJECTED, f"the Job is not allowed now: {error.message}"))
    return None


async def _check_job_template(ctx: Context[TrainingRunSpec, TrainingRunStatus], resolved: Resolved) -> None:
    """Ask the API server (dry run) whether the Job would be accepted, before creating
    anything in MLflow: a bad template should leave no FAILED run behind. A Job of the
    same shape accepted a moment ago is not asked about again (RecentlyAccepted)."""
    problems = logic.distributed_problems(ctx.spec, ctx.identity.name)
    if problems:
        raise ReconcileProblem(stalled(Reason.INVALID_SPEC, "; ".join(problems)))
    credentials = _credential_source(ctx, resolved)
    if credentials is not None and credentials.service_account:
        await _check_pod_identity(ctx, resolved)
    accepted = ctx.services.caches.accepted_job_shapes
    labels = queue_labels(ctx.metadata)
    shape = logic.job_shape(ctx.spec, ctx.identity.namespace, resolved.experiment_id, resolved.target.uri,
                            credentials, labels)
    if accepted.accepted(shape):
        return
    body = logic.build_job(ctx.spec, ctx.identity, logic.PLACEHOLDER_RUN_ID, resolved.experiment_id,
                           resolved.target.uri, credentials, labels)
    try:
        await ctx.services.kube.create_job(ctx.identity.namespace, body, dry_run=True)
    except KubernetesError as error:
        if error.status == 409:
            return
        raise _job_rejected(error, "would be") or error from None
    accepted.remember(shape)


# What a training pod does in MLflow on a workspace server (Kubernetes RBAC of the plugin's
# API group): log to runs of its experiment (`update`) and read it (`get`).
MLFLOW_RBAC_GROUP = "mlflow.kubeflow.org"
POD_MLFLOW_VERBS = ("get", "update")


async def _check_pod_identity(ctx: Context[TrainingRunSpec, TrainingRunStatus], resolved: Resolved) -> None:
    """On a workspace server the pods log as their ServiceAccount: ask Kubernetes (a
    SubjectAccessReview) whether that ServiceAccount may, before anything is created, so a
    missing RoleBinding is a condition that says what to bind, not a crashed Job. A grant
    seen a moment ago is not asked about again (RecentlyAccepted); a refusal always is."""
    problem = logic.service_account_token_problem(ctx.spec)
    if problem:
        raise ReconcileProblem(stalled(Reason.INVALID_TEMPLATE, problem))
    namespace = ctx.identity.namespace
    account = logic.pod_service_account(ctx.spec)
    granted = ctx.services.caches.granted_service_accounts
    key = f"{resolved.target.uri}\n{namespace}\n{account}\n{resolved.experiment_name}"
    if granted.accepted(key):
        return
    for verb in POD_MLFLOW_VERBS:
        if not await ctx.services.kube.service_account_may(namespace, account, MLFLOW_RBAC_GROUP, "experiments",
                                                           verb, resolved.experiment_name or None):
            role = ctx.services.config.training_cluster_role
            raise ReconcileProblem(progressing(
                Reason.SERVICE_ACCOUNT_NOT_AUTHORIZED,
                f"ServiceAccount {account!r} may not {verb} MLflow experiment {resolved.experiment_name!r} in "
                f"workspace {namespace!r}, so its pods could not log to their run; bind the ClusterRole {role}: "
                f"kubectl create rolebinding {account}-mlflow-training -n {namespace} --clusterrole={role} "
                f"--serviceaccount={namespace}:{account}",
            ))
    granted.remember(key)


async def _ensure_job(ctx: Context[TrainingRunSpec, TrainingRunStatus], resolved: Resolved, run: RunInfo,
                      job: JobSnapshot | None) -> JobSnapshot:
    """The run's Job, created if there is none (no Job's uid is recorded yet: the starting
    stage), checked to be this TrainingRun's, and recorded."""
    kube, identity = ctx.services.kube, ctx.identity
    if job is None:
        await _ensure_service(ctx)
        body = logic.build_job(ctx.spec, identity, run.run_id, resolved.experiment_id, resolved.target.uri,
                               _credential_source(ctx, resolved), queue_labels(ctx.metadata))
        try:
            job = await kube.create_job(identity.namespace, body)
            # Its first watch events (pending) bring nothing new: no reconcile for them.
            ctx.services.caches.handled_jobs.record(identity.uid, ctx.services.caches.handled_jobs.signature(job, "Pending"))
            # One Event for the start: the run (created just before, or by an earlier attempt) and its Job.
            shape = "" if ctx.spec.distributed is None else \
                f" ({ctx.spec.distributed.nodes} nodes, in headless Service {identity.name})"
            ctx.event("Normal", "JobCreated", f"created Job {identity.name}{shape} for MLflow run {run.run_id} in "
                                                    f"experiment {resolved.experiment_name!r} ({resolved.experiment_id})")
        except KubernetesError as error:
            if error.status != 409:
                raise _job_rejected(error, "was") or error from None
            job = await kube.get_job(identity.namespace, identity.name)
    if job is None:
        raise ReconcileProblem(progressing(Reason.JOB_PENDING, "the Job disappeared while it was being created",
                                           awaited=True, expected=True))
    if not job.controlled_by(identity.uid):
        raise ReconcileProblem(stalled(
            Reason.JOB_CONFLICT, f"a Job named {identity.name!r} exists and is not controlled by this TrainingRun; "
            "the operator leaves it alone: delete or rename it"
        ))
    in_job = job.labels.get(LABEL_RUN_ID)
    if in_job != run.run_id:
        # Created by an earlier attempt for a twin of this run: the Job's run is the one
        # (closing the run deletes the other), if that run says it is this object's.
        confirmed = await _job_run_confirmed(ctx, resolved, job, in_job)
        ctx.record(TrainingRunStatus(run_id=confirmed, url=resolved.target.run_url(resolved.experiment_id, confirmed)))
    ctx.record(TrainingRunStatus(job_uid=job.uid, job_name=identity.name))
    return job


async def _ensure_service(ctx: Context[TrainingRunSpec, TrainingRunStatus]) -> None:
    """A distributed run's headless Service, before its Job: the ranks' names resolve from
    their first start. One of the same name that this TrainingRun does not control is left alone."""
    body = logic.build_service(ctx.spec, ctx.identity)
    if body is None:
        return
    try:
        controller = await ctx.services.kube.ensure_service(ctx.identity.namespace, body)
    except KubernetesError as error:
        raise _job_rejected(error, "Service was") or error from None
    if controller != ctx.identity.uid:
        raise ReconcileProblem(stalled(
            Reason.JOB_CONFLICT, f"a Service named {ctx.identity.name!r} exists and is not controlled by this "
            "TrainingRun; the ranks of a distributed run find each other through it: delete or rename it"))


async def _job_run_confirmed(ctx: Context[TrainingRunSpec, TrainingRunStatus], resolved: Resolved, job: JobSnapshot,
                             run_id: str | None) -> str:
    """A run id read from a Job's label is this object's only if the run's tags say so;
    otherwise the Job is a stranger's, whatever its ownerReferences claim."""
    if run_id:
        with contextlib.suppress(ReconcileProblem):
            return (await owned_run(ctx.services, resolved, run_id, ctx.identity)).run_id
    raise ReconcileProblem(stalled(
        Reason.JOB_CONFLICT, f"Job {job.name!r} names MLflow run {run_id}, which is not this TrainingRun's run; "
        "no run is touched: delete the Job"))


async def _in_progress(ctx: Context[TrainingRunSpec, TrainingRunStatus], state: JobSnapshot) -> Outcome:
    """The Job is pending or running; a drift check copies the run's live metrics."""
    phase = logic.phase_of(state, ctx.status.phase)
    ctx.record(TrainingRunStatus(phase=phase))
    if ctx.spec.distributed is not None:
        ctx.record(TrainingRunStatus(nodes=logic.node_counts(state)))
    if state.start_time:
        ctx.record(TrainingRunStatus(start_time=timestamps.rfc3339(state.start_time)))
    if phase == "Running" and ctx.drift_check and ctx.status.run_id:
        resolved = await _resolve(ctx)
        run = await ctx.services.mlflow.get_run(resolved.target, ctx.status.run_id)
        if run is not None:
            ctx.record(TrainingRunStatus(
                metrics=run.metrics,
                primary_metric=logic.primary_metric_text(run.metrics, ctx.spec.primary_metric),
            ))
    run_id = ctx.status.run_id
    if phase == "Running":
        # The Job's events and the refresh timer carry it on from here.
        return progressing(Reason.RUNNING, f"MLflow run {run_id} is running in Job {ctx.identity.name}",
                           awaited=True, expected=True)
    if state.suspended:
        return progressing(Reason.JOB_SUSPENDED, f"Job {ctx.identity.name} is suspended: it starts when it is "
                           f"resumed, by a queue such as Kueue (label {KUEUE_QUEUE_LABEL}) or by hand "
                           f"(kubectl patch job {ctx.identity.name} -p '{{\"spec\":{{\"suspend\":false}}}}')",
                           awaited=True, expected=True)
    waiting_for = "its pods" if ctx.spec.distributed is not None else "its pod"
    return progressing(Reason.JOB_PENDING, f"Job {ctx.identity.name} is waiting for {waiting_for} to run",
                       awaited=True, expected=True)


# --------------------------------------------------------------------------- closing


async def _job_ended(ctx: Context[TrainingRunSpec, TrainingRunStatus], state: JobSnapshot, resolved: Resolved | None = None) -> Outcome:
    """The Job finished, or is being deleted: record its outcome in status first, then let
    the Job go (its finalizer held it until now), then close the run in MLflow."""
    # The pods say why a Job failed, and what the run ran on (pod, node, image digest).
    pods = await _pods_of(ctx, state)
    failed = state.finished is not None and state.finished[0] == "Failed"
    pod_reasons = logic.pod_failure_reasons(pods, state.failed_indexes) if failed else []
    ended = logic.job_outcome(state, ctx.identity.name, pod_reasons, logic.stop_reason(ctx.metadata))
    ctx.record(TrainingRunStatus(
        start_time=timestamps.rfc3339(state.start_time) or ctx.status.start_time,
        completion_time=timestamps.rfc3339(ended.completion_time),
        job_outcome=JobOutcomeStatus(phase=ended.phase, reason=ended.reason, message=ended.message),
    ))
    if ctx.spec.distributed is not None:
        ctx.record(TrainingRunStatus(nodes=logic.node_counts(state)))
    if state.deleting:
        # The Job is going (a TTL, by hand): its outcome is written before it is let go.
        await ctx.checkpoint("job-outcome")
        await _let_deleted_job_go(ctx, state)
    # Otherwise the Job stays (its finalizer too, until the TrainingRun is deleted): a crash
    # before the outcome is written finds the Job ended again.
    if _stopped_job_still_there(ctx, state):
        return _waiting_for_stopped_pods(ctx)
    ran_on = provenance.pod_run_tags(pods, logic.first_container_name(ctx.spec.template))
    return await _finish(ctx, resolved or await _resolve(ctx), ran_on)




async def _pods_of(ctx: Context[TrainingRunSpec, TrainingRunStatus], job: JobSnapshot) -> list[PodSnapshot]:
    """The Job's own pods: those it controls (a bare pod can carry any label)."""
    pods = await ctx.services.kube.list_pods(ctx.identity.namespace, f"{CONTROLLER_UID_LABEL}={job.uid}")
    return [pod for pod in pods if pod.controller_uid == job.uid]


async def _job_lost(ctx: Context[TrainingRunSpec, TrainingRunStatus], resolved: Resolved) -> Outcome:
    """The Job is gone and its outcome was never recorded (it was created without the
    finalizer, or the finalizer was removed by hand): the run was cut short."""
    stopped = logic.stop_reason(ctx.metadata)
    outcome = JobOutcomeStatus(phase="EarlyStopped", reason=Reason.EARLY_STOPPED,
                               message=f"stopped by its sweep: {stopped}") if stopped else JobOutcomeStatus(
        phase="Failed", reason=Reason.JOB_DELETED,
        message=f"Job {ctx.identity.name} was deleted before its outcome was recorded")
    ctx.record(TrainingRunStatus(
        completion_time=ctx.status.completion_time or timestamps.now_rfc3339(), job_outcome=outcome))
    await ctx.checkpoint("job-outcome")
    return await _finish(ctx, resolved)


async def _finish(ctx: Context[TrainingRunSpec, TrainingRunStatus], resolved: Resolved, ran_on: dict[str, str] | None = None) -> Outcome:
    """Close the MLflow run from the recorded outcome (never from what the container
    reported), with the tags that say what it ran on; copy its metrics, and register the
    model of a successful run."""
    mlflow, target, status = ctx.services.mlflow, resolved.target, ctx.status
    recorded = status.job_outcome
    # The phase moves to Succeeded/Failed with the run's final status, not before it.
    run_id, phase = status.run_id, (recorded.phase if recorded else None) or status.phase
    assert run_id is not None and phase is not None, "closing a run that was started and ended"
    reason = (recorded.reason if recorded else "") or (Reason.SUCCEEDED if phase == "Succeeded" else Reason.JOB_FAILED)
    run_status = status.run_status or logic.final_run_status(phase, reason)
    run: RunInfo | None = None
    if not status.run_status:
        run = await _run_to_close(ctx, resolved, run_id)
        wanted = dict(ran_on or {})
        if phase == "EarlyStopped" and recorded is not None:
            wanted[STOPPED_TAG] = recorded.message  # why, in MLflow's UI too
        missing_tags = {key: value for key, value in wanted.items() if run.tags.get(key) != value}
        if missing_tags:
            await mlflow.log_params_and_tags(target, run_id, {}, missing_tags)
        end_ms = timestamps.millis(timestamps.parse(status.completion_time)) or int(time.time() * 1000)
        if run.status != run_status or run.end_time is None:
            await mlflow.set_run_status(target, run_id, run_status, run.end_time or end_ms)
        ctx.record(TrainingRunStatus(
            phase=phase,
            run_status=run_status,
            metrics=run.metrics,
            primary_metric=logic.primary_metric_text(run.metrics, ctx.spec.primary_metric),
        ))
    if phase == "EarlyStopped":
        message = f"{recorded.message if recorded else 'stopped by its sweep'}; MLflow run {run_id} marked {run_status}"
        ctx.event("Normal", "EarlyStopped", message)
        return stalled(Reason.EARLY_STOPPED, message)
    if phase == "Failed":
        message = f"{(recorded.message if recorded else '') or 'Job failed'}; MLflow run {run_id} marked {run_status}"
        # The outcome becomes a Warning event through the condition transition.
        return stalled(reason, message)
    if ctx.spec.register_model is None:
        ctx.event("Normal", "Succeeded", f"MLflow run {run_id} FINISHED")
        return ready(Reason.SUCCEEDED, f"MLflow run {run_id} FINISHED")
    # Worth keeping even if registration fails below.
    await ctx.checkpoint("run-closed")
    run = run or await owned_run(ctx.services, resolved, run_id, ctx.identity)
    registration = await register_model(ctx, resolved, run, ctx.spec.register_model)
    message = f"MLflow run {run_id} FINISHED; {registration.describe()}"
    ctx.record(TrainingRunStatus(model_version=registration.version))
    ctx.event("Normal", "Succeeded", message)
    return ready(Reason.SUCCEEDED, message)


async def _run_to_close(ctx: Context[TrainingRunSpec, TrainingRunStatus], resolved: Resolved, run_id: str) -> RunInfo:
    """The run, found by the object's uid tag: the same one call also finds a twin that a
    retried create_run POST may have left (same start time: the same request), which is
    deleted now. Other runs with the tag (as after a hand-over) are left as they are."""
    mlflow, target = ctx.services.mlflow, resolved.target
    runs = await mlflow.find_runs_by_tag(target, resolved.experiment_id, TAG_UID, ctx.identity.uid)
    run = next((r for r in runs if r.run_id == run_id and r.lifecycle_stage == "active"), None) \
        or await owned_run(ctx.services, resolved, run_id, ctx.identity)
    for duplicate in runs:
        if duplicate.run_id != run_id and duplicate.lifecycle_stage == "active" \
                and duplicate.start_time == run.start_time:
            await mlflow.set_run_tag(target, duplicate.run_id, DUPLICATE_TAG, run_id)
            await mlflow.delete_run(target, duplicate.run_id)
            ctx.event("Normal", "DuplicateRunDeleted", f"deleted duplicate MLflow run {duplicate.run_id} (kept {run_id})")
    return run


# --------------------------------------------------------------------------- deletion


async def kill_training_run(ctx: Context[TrainingRunSpec, TrainingRunStatus]) -> None:
    """The object is being deleted: its Job is removed (with its pods) and a run still open is
    closed: FINISHED or FAILED if the Job had ended (its outcome is never lost), otherwise
    KILLED. A run closed earlier is kept as it is."""
    services, identity, status, kube = ctx.services, ctx.identity, ctx.status, ctx.services.kube
    job = await kube.get_job(identity.namespace, identity.name)
    if job is not None and not job.controlled_by(identity.uid):
        job = None  # a stranger's Job of the same name: left alone
    state = job if job is not None and job.uid == status.job_uid else None
    if job is not None:
        await kube.delete_job(identity.namespace, identity.name, propagation="Background", uid=job.uid)
        await kube.remove_job_finalizer(identity.namespace, identity.name, logic.JOB_FINALIZER)
    run_id = status.run_id
    if not run_id or status.run_status in logic.CLOSED_RUN_STATUSES:
        return
    if status.job_outcome:
        phase, reason = status.job_outcome.phase, status.job_outcome.reason
    elif state is not None and state.finished:
        ended = logic.job_outcome(state, identity.name, [])
        phase, reason = ended.phase, ended.reason
    else:
        phase, reason = "Failed", Reason.KILLED
    run_status = logic.final_run_status(phase, reason)
    resolved = await _resolve(ctx)
    run = await owned_run_to_close(services, resolved, run_id, identity)
    if run is not None and (run.status != run_status or run.end_time is None):
        await services.mlflow.set_run_status(resolved.target, run_id, run_status,
                                             run.end_time or int(time.time() * 1000))
    if run_status == "KILLED":
        ctx.event("Normal", "Killed", f"deleted mid-run: MLflow run {run_id} marked KILLED; Job deleted")
    else:
        ctx.event("Normal", "Closed", f"deleted after its Job ended: MLflow run {run_id} marked {run_status}")
