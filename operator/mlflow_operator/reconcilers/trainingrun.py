"""TrainingRun reconciler: experiment -> MLflow run -> Job -> close the run -> register.

Level-based: every trigger (create, resume, a Job event, the timer) looks at what exists
and takes the next step, so a restart at any point neither loses nor duplicates work.
One TrainingRun has exactly one MLflow run (found again by its `k8s.uid` tag) and at most
one Job (named after the object, owned by it).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

from mlflow_operator.api.common import TAG_UID, ObjectIdentity, TrackingSpec
from mlflow_operator.api.experiment import PLURAL as EXPERIMENTS
from mlflow_operator.api.trainingrun import PLURAL, TERMINAL_PHASES, TrainingRunSpec
from mlflow_operator.gateways.kubernetes import KubernetesError
from mlflow_operator.logic import trainingrun as logic
from mlflow_operator.logic.conditions import (
    READY,
    Outcome,
    ReconcileProblem,
    condition,
    progressing,
    ready,
    stalled,
)
from mlflow_operator.reconcilers.common import Services, resolve_target_and_secret
from mlflow_operator.tracking import AlreadyExists, InvalidRequest, RunInfo, TrackingTarget

Event = tuple[str, str, str]
DUPLICATE_TAG = "mlflow.operator.dev/duplicate-of"


@dataclass
class TrainingRunResult:
    outcome: Outcome
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Context:
    services: Services
    identity: ObjectIdentity
    spec: TrainingRunSpec
    status: dict[str, Any]


@dataclass(frozen=True)
class Resolved:
    experiment_id: str
    experiment_name: str
    target: TrackingTarget
    secret_name: str | None


def parse_spec(raw_spec: Any) -> TrainingRunSpec:
    try:
        spec = TrainingRunSpec.parse(raw_spec)
    except ValueError as error:
        raise ReconcileProblem(stalled("InvalidSpec", f"invalid spec: {error}")) from None
    logic.param_env(spec.params)  # raises on colliding env names
    return spec


def is_closed(spec: TrainingRunSpec, status: dict[str, Any]) -> bool:
    """Finished, and nothing left to do in MLflow for it."""
    if status.get("phase") not in TERMINAL_PHASES:
        return False
    if status.get("runStatus") not in ("FINISHED", "FAILED", "KILLED"):
        return False
    return status.get("phase") != "Succeeded" or spec.register_model is None or bool(status.get("modelVersion"))


def outcome_of_closed(status: dict[str, Any]) -> Outcome:
    ready_condition = condition(status.get("conditions"), READY) or {}
    reason = ready_condition.get("reason", status.get("phase", "Succeeded"))
    message = ready_condition.get("message", "")
    if status.get("phase") == "Succeeded" and ready_condition.get("status") == "True":
        return ready(message, reason)
    return stalled(reason, message)


async def reconcile_training_run(
    services: Services, fresh: dict[str, Any], refresh_metrics: bool = False
) -> TrainingRunResult:
    identity = ObjectIdentity.from_body(fresh)
    status = dict(fresh.get("status") or {})
    spec = parse_spec(fresh.get("spec"))
    if is_closed(spec, status):
        return TrainingRunResult(outcome_of_closed(status))
    ctx = Context(services, identity, spec, status)

    if status.get("phase") == "Succeeded" and status.get("runStatus") == "FINISHED" and status.get("runId"):
        # Only the registration is left (it failed before); the Job may be gone (ttl) by now.
        events: list[Event] = []
        version = await _register(ctx, await _resolve(ctx), status["runId"], events)
        message = f"MLflow run {status['runId']} FINISHED; registered {version['uri']}"
        events.append(("Normal", "Succeeded", message))
        return TrainingRunResult(ready(message, "Succeeded"), {"modelVersion": version}, events)

    if status.get("runId") and status.get("jobUid"):
        job = await services.kube.get_job(identity.namespace, identity.name)
        if job is not None and job.metadata.uid == status["jobUid"]:
            state = logic.job_state(job)
            if not state.finished:
                return await _in_progress(ctx, state, refresh_metrics)
            return await _close(ctx, await _resolve(ctx), state)

    resolved = await _resolve(ctx)
    events = []
    run = await _ensure_run(ctx, resolved, events)
    job = await _ensure_job(ctx, resolved, run, events)
    if job is None:  # deleted by someone after it was created
        return await _close_without_job(ctx, resolved, run.run_id, events)
    state = logic.job_state(job)
    if state.finished:
        result = await _close(ctx, resolved, state)
        result.events[:0] = events
        return result
    result = await _in_progress(ctx, state, refresh_metrics=False)
    result.events[:0] = events
    return result


# --------------------------------------------------------------------------- experiment


async def _experiment_object(ctx: Context) -> dict[str, Any] | None:
    ref = ctx.spec.experiment_ref
    if ref is None:
        return None
    return await ctx.services.kube.get_object(EXPERIMENTS, ctx.identity.namespace, ref.name)


def _tracking_for(spec: TrainingRunSpec, experiment_obj: dict[str, Any] | None) -> TrackingSpec | None:
    """A run uses its Experiment's server; it may bring its own Secret for it."""
    own = spec.tracking
    if experiment_obj is None:
        return own
    inherited = TrackingSpec.model_validate((experiment_obj.get("spec") or {}).get("tracking") or {})
    if own and own.uri and inherited.uri and own.uri.rstrip("/") != inherited.uri.rstrip("/"):
        raise ReconcileProblem(stalled(
            "InvalidSpec",
            f"spec.tracking.uri {own.uri!r} differs from the server of Experiment {spec.experiment_ref.name!r} "
            f"({inherited.uri!r}); a run must be tracked where its experiment lives",
        ))
    return TrackingSpec(
        uri=(own.uri if own and own.uri else inherited.uri),
        secretRef=(own.secret_ref if own and own.secret_ref else inherited.secret_ref),
    )


async def _resolve(ctx: Context) -> Resolved:
    """The experiment and server for the run. Before the run starts, an experimentRef must be
    Ready; afterwards the run goes on whatever happens to the Experiment object."""
    spec, identity, status = ctx.spec, ctx.identity, ctx.status
    experiment_obj = await _experiment_object(ctx)
    started = bool(status.get("runId") and status.get("experimentId"))
    if spec.experiment_ref and not started:
        name = spec.experiment_ref.name
        if experiment_obj is None:
            raise ReconcileProblem(progressing(
                "ExperimentNotFound", f"Experiment {name!r} not found in namespace {identity.namespace!r}"
            ))
        exp_status = experiment_obj.get("status") or {}
        exp_ready = condition(exp_status.get("conditions"), READY) or {}
        if exp_ready.get("status") != "True" or not exp_status.get("experimentId"):
            why = f": {exp_ready.get('reason')}: {exp_ready.get('message')}" if exp_ready else ""
            raise ReconcileProblem(progressing("ExperimentNotReady", f"Experiment {name!r} is not Ready{why}"))
    target, secret_name = await resolve_target_and_secret(
        ctx.services, identity.namespace, _tracking_for(spec, experiment_obj)
    )
    if started:
        return Resolved(status["experimentId"], status.get("experimentName", ""), target, secret_name)
    if spec.experiment_ref:
        exp_status = experiment_obj["status"]
        return Resolved(exp_status["experimentId"], exp_status.get("experimentName", ""), target, secret_name)
    return await _experiment_by_name(ctx, target, secret_name)


async def _experiment_by_name(ctx: Context, target: TrackingTarget, secret_name: str | None) -> Resolved:
    name = ctx.spec.experiment_name
    assert name is not None
    mlflow = ctx.services.mlflow
    experiment = await mlflow.get_experiment_by_name(target, name)
    if experiment is None:
        # Not tagged as owned: an Experiment object may adopt it later.
        created_by = f"TrainingRun {ctx.identity.namespace}/{ctx.identity.name}"
        try:
            await mlflow.create_experiment(target, name, None, {"k8s.createdBy": created_by})
        except AlreadyExists:
            pass
        except InvalidRequest as error:
            raise ReconcileProblem(stalled("InvalidSpec", f"MLflow rejected experiment {name!r}: {error}")) from None
        experiment = await mlflow.get_experiment_by_name(target, name)
        assert experiment is not None
    if experiment.deleted:
        raise ReconcileProblem(stalled(
            "ExperimentDeleted",
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted; restore it or choose another",
        ))
    return Resolved(experiment.experiment_id, experiment.name, target, secret_name)


# --------------------------------------------------------------------------- run


async def _ensure_run(ctx: Context, resolved: Resolved, events: list[Event]) -> RunInfo:
    mlflow, target, identity = ctx.services.mlflow, resolved.target, ctx.identity
    known = ctx.status.get("runId")
    if known:
        run = await mlflow.get_run(target, known)
        if run is None or run.lifecycle_stage == "deleted":
            raise ReconcileProblem(stalled(
                "RunDeletedInMLflow", f"MLflow run {known} was deleted outside the operator"
            ))
        if run.tags.get(TAG_UID) != identity.uid:
            raise ReconcileProblem(stalled("Conflict", f"MLflow run {known} is not tagged as this object's run"))
    else:
        runs = await mlflow.find_runs_by_tag(target, resolved.experiment_id, TAG_UID, identity.uid)
        run, duplicates = logic.canonical_run(runs)
        if run is None:
            await _check_job_template(ctx, resolved)
            run = await mlflow.create_run(
                target, resolved.experiment_id, logic.run_name(ctx.spec, identity),
                logic.run_tags(ctx.spec, identity, logic.first_image(ctx.spec.template)),
                start_time_ms=int(time.time() * 1000),
            )
            events.append(("Normal", "RunCreated", f"created MLflow run {run.run_id} in experiment "
                                                    f"{resolved.experiment_name!r} ({resolved.experiment_id})"))
            # A POST retried by the client can leave a twin: settle on the oldest now.
            runs = await mlflow.find_runs_by_tag(target, resolved.experiment_id, TAG_UID, identity.uid)
            run, duplicates = logic.canonical_run(runs) if runs else (run, [])
            assert run is not None
        else:
            events.append(("Normal", "RunAdopted", f"found this object's MLflow run {run.run_id}"))
        for duplicate in duplicates:
            await mlflow.set_run_tag(target, duplicate.run_id, DUPLICATE_TAG, run.run_id)
            await mlflow.delete_run(target, duplicate.run_id)
            events.append(("Warning", "DuplicateRunDeleted",
                           f"deleted duplicate MLflow run {duplicate.run_id} (kept {run.run_id})"))
        # Recorded before anything else happens, so no later step can create a second run.
        await ctx.services.kube.patch_status(PLURAL, identity.namespace, identity.name, {
            "phase": ctx.status.get("phase") or "Pending",
            "runId": run.run_id,
            "experimentId": resolved.experiment_id,
            "experimentName": resolved.experiment_name,
            "jobName": identity.name,
            "url": target.run_url(resolved.experiment_id, run.run_id),
        })
    missing = {k: v for k, v in ctx.spec.params.items() if run.params.get(k) != v}
    if missing:
        try:
            await mlflow.log_params_and_tags(target, run.run_id, missing, {})
        except InvalidRequest as error:
            raise ReconcileProblem(stalled("InvalidSpec", f"MLflow rejected the params: {error}")) from None
    return run


# --------------------------------------------------------------------------- job


def _credential_source(ctx: Context, resolved: Resolved) -> logic.CredentialSource | None:
    if not resolved.secret_name:
        return None
    return logic.CredentialSource.for_secret(resolved.secret_name, resolved.target.credentials)


async def _check_job_template(ctx: Context, resolved: Resolved) -> None:
    """Ask the API server (dry run) whether the Job would be accepted, before creating
    anything in MLflow: a bad template should leave no FAILED run behind."""
    body = logic.build_job(ctx.spec, ctx.identity, logic.PLACEHOLDER_RUN_ID, resolved.experiment_id,
                           resolved.target.uri, _credential_source(ctx, resolved))
    try:
        await ctx.services.kube.create_job(ctx.identity.namespace, body, dry_run=True)
    except KubernetesError as error:
        if error.status == 409:
            return
        if error.status in (400, 422):
            raise ReconcileProblem(stalled("InvalidTemplate", f"the Job would be rejected: {error.message}")) from None
        if error.status == 403:
            raise ReconcileProblem(progressing("JobRejected", f"the Job is not allowed now: {error.message}")) from None
        raise


async def _ensure_job(ctx: Context, resolved: Resolved, run: RunInfo, events: list[Event]):
    kube, identity = ctx.services.kube, ctx.identity
    job = await kube.get_job(identity.namespace, identity.name)
    known_uid = ctx.status.get("jobUid")
    if job is None:
        if known_uid:
            return None
        body = logic.build_job(ctx.spec, identity, run.run_id, resolved.experiment_id, resolved.target.uri,
                               _credential_source(ctx, resolved))
        try:
            job = await kube.create_job(identity.namespace, body)
            events.append(("Normal", "JobCreated", f"created Job {identity.name} for MLflow run {run.run_id}"))
        except KubernetesError as error:
            if error.status == 409:
                job = await kube.get_job(identity.namespace, identity.name)
            elif error.status in (400, 422):
                raise ReconcileProblem(stalled("InvalidTemplate", f"the Job was rejected: {error.message}")) from None
            elif error.status == 403:
                raise ReconcileProblem(progressing("JobRejected", f"the Job is not allowed now: {error.message}")) from None
            else:
                raise
    if job is None:
        raise ReconcileProblem(progressing("JobPending", "the Job disappeared while it was being created",
                                                awaited=True, expected=True))
    if identity.uid not in {ref.uid for ref in job.metadata.owner_references or []}:
        raise ReconcileProblem(stalled(
            "JobConflict", f"a Job named {identity.name!r} exists and is not owned by this TrainingRun"
        ))
    if known_uid and job.metadata.uid != known_uid:
        return None  # the Job we created was deleted; this one is a stranger's recreation
    if known_uid != job.metadata.uid:
        await kube.patch_status(PLURAL, identity.namespace, identity.name,
                                {"jobUid": job.metadata.uid, "jobName": identity.name})
    return job


async def _in_progress(ctx: Context, state: logic.JobState, refresh_metrics: bool) -> TrainingRunResult:
    phase = logic.phase_of(state, ctx.status.get("phase"))
    update: dict[str, Any] = {"phase": phase}
    if state.start_time:
        update["startTime"] = logic.rfc3339(state.start_time)
    if phase == "Running" and refresh_metrics and ctx.status.get("runId"):
        resolved = await _resolve(ctx)
        run = await ctx.services.mlflow.get_run(resolved.target, ctx.status["runId"])
        if run is not None:
            update["metrics"] = run.metrics
            update["primaryMetric"] = logic.primary_metric_text(run.metrics, ctx.spec.primary_metric)
    run_id = ctx.status.get("runId")
    if phase == "Running":
        # The Job's events and the refresh timer carry it on from here.
        return TrainingRunResult(progressing("Running", f"MLflow run {run_id} is running in Job {ctx.identity.name}",
                                             awaited=True, expected=True), update)
    return TrainingRunResult(progressing("JobPending", f"Job {ctx.identity.name} is waiting for its pod to run",
                                         awaited=True, expected=True), update)


# --------------------------------------------------------------------------- closing


async def _pod_failure_reasons(ctx: Context) -> list[str]:
    pods = await ctx.services.kube.list_pods(ctx.identity.namespace, f"job-name={ctx.identity.name}")
    reasons: list[str] = []
    for pod in pods:
        for container in pod.status.container_statuses or []:
            terminated = container.state.terminated if container.state else None
            if terminated and terminated.exit_code:
                reasons.append(f"pod {pod.metadata.name} container {container.name} exited with code "
                               f"{terminated.exit_code} ({terminated.reason or 'Error'})")
    return reasons


async def _close(ctx: Context, resolved: Resolved, state: logic.JobState) -> TrainingRunResult:
    """The Job ended: set the run's final status from the Job (not from the container),
    copy metrics, register the model."""
    mlflow, target, identity = ctx.services.mlflow, resolved.target, ctx.identity
    run_id = ctx.status.get("runId")
    assert run_id, "a finished Job without a recorded run"
    phase = logic.phase_of(state)
    run_status = logic.final_run_status(phase)
    run = await mlflow.get_run(target, run_id)
    if run is None:
        raise ReconcileProblem(stalled("RunDeletedInMLflow", f"MLflow run {run_id} was deleted outside the operator"))
    end_ms = logic.millis(state.completion_time) or int(time.time() * 1000)
    if run.status != run_status or run.end_time is None:
        await mlflow.set_run_status(target, run_id, run_status, run.end_time or end_ms)
    update: dict[str, Any] = {
        "phase": phase,
        "runStatus": run_status,
        "completionTime": logic.rfc3339(state.completion_time) or ctx.status.get("completionTime"),
        "startTime": logic.rfc3339(state.start_time) or ctx.status.get("startTime"),
        "metrics": run.metrics,
        "primaryMetric": logic.primary_metric_text(run.metrics, ctx.spec.primary_metric),
    }
    events: list[Event] = []
    if phase == "Failed":
        message = logic.failure_message(state, await _pod_failure_reasons(ctx))
        reason = state.finished[1] if state.finished and state.finished[1] else "JobFailed"
        # The outcome becomes a Warning event through the condition transition.
        return TrainingRunResult(stalled(reason, f"{message}; MLflow run {run_id} marked FAILED"), update)
    if ctx.spec.register_model is None:
        events.append(("Normal", "Succeeded", f"MLflow run {run_id} FINISHED"))
        return TrainingRunResult(ready(f"MLflow run {run_id} FINISHED", "Succeeded"), update, events)
    # Status so far is worth keeping even if registration fails below.
    await ctx.services.kube.patch_status(PLURAL, identity.namespace, identity.name, update)
    version = await _register(ctx, resolved, run_id, events)
    update["modelVersion"] = version
    message = f"MLflow run {run_id} FINISHED; registered {version['uri']}"
    events.append(("Normal", "Succeeded", message))
    return TrainingRunResult(ready(message, "Succeeded"), update, events)


async def _close_without_job(ctx: Context, resolved: Resolved, run_id: str, events: list[Event]) -> TrainingRunResult:
    mlflow, target = ctx.services.mlflow, resolved.target
    run = await mlflow.get_run(target, run_id)
    if run is not None and run.status != "KILLED":
        await mlflow.set_run_status(target, run_id, "KILLED", run.end_time or int(time.time() * 1000))
    update = {"phase": "Failed", "runStatus": "KILLED", "metrics": run.metrics if run else {},
              "completionTime": ctx.status.get("completionTime") or logic.rfc3339(dt.datetime.now(dt.timezone.utc))}
    return TrainingRunResult(stalled(
        "JobDeleted", f"Job {ctx.identity.name} was deleted before it finished; MLflow run {run_id} marked KILLED"
    ), update, events)


async def _register(ctx: Context, resolved: Resolved, run_id: str, events: list[Event]) -> dict[str, str]:
    """Create (once) the model version from the run's logged model and point the aliases at it."""
    spec = ctx.spec.register_model
    assert spec is not None
    mlflow, target, identity = ctx.services.mlflow, resolved.target, ctx.identity
    models = await mlflow.logged_models_of_run(target, resolved.experiment_id, run_id)
    model = logic.pick_logged_model(models, spec.artifact_path)
    if model is None:
        found = ", ".join(sorted({m.name for m in models})) or "none"
        raise ReconcileProblem(stalled(
            "ModelNotFound",
            f"MLflow run {run_id} logged no model named {spec.artifact_path!r} (logged models: {found}); "
            f"log it with mlflow.<flavor>.log_model(..., name={spec.artifact_path!r}) or set "
            "registerModel.artifactPath",
        ))
    source = f"models:/{model.model_id}"
    if await mlflow.get_registered_model(target, spec.name) is None:
        try:
            await mlflow.create_registered_model(
                target, spec.name, {"k8s.createdBy": f"TrainingRun {identity.namespace}/{identity.name}"}, None
            )
        except AlreadyExists:
            pass
        except InvalidRequest as error:
            raise ReconcileProblem(stalled("InvalidSpec", f"MLflow rejected model {spec.name!r}: {error}")) from None
    versions = await mlflow.model_versions(target, spec.name)
    version = next((v for v in versions if v.run_id == run_id and v.source == source), None)
    if version is None:
        version = await mlflow.create_model_version(
            target, spec.name, source, run_id, model.model_id, {**spec.tags, **identity.tags()}
        )
        events.append(("Normal", "ModelRegistered", f"registered {spec.name} version {version.version} "
                                                      f"from {source}"))
    for alias in spec.aliases:
        if alias not in version.aliases:
            await mlflow.set_alias(target, spec.name, alias, version.version)
    return {"name": spec.name, "version": version.version, "uri": f"models:/{spec.name}/{version.version}"}


# --------------------------------------------------------------------------- deletion


async def kill_training_run(services: Services, body: dict[str, Any]) -> Event | None:
    """The object is being deleted: a run still in progress is KILLED and its Job removed
    (with its pods); a finished run is kept as it is."""
    identity = ObjectIdentity.from_body(body)
    status = dict(body.get("status") or {})
    deleted_job = await services.kube.delete_job(identity.namespace, identity.name, propagation="Background")
    run_id = status.get("runId")
    if not run_id or status.get("phase") in TERMINAL_PHASES:
        return None
    spec = parse_spec(body.get("spec"))
    resolved = await _resolve(Context(services, identity, spec, status))
    if await services.mlflow.get_run(resolved.target, run_id) is not None:
        # Whatever the container reported, the run was cut short.
        await services.mlflow.set_run_status(resolved.target, run_id, "KILLED", int(time.time() * 1000))
    return ("Normal", "Killed", f"deleted mid-run: MLflow run {run_id} marked KILLED"
            + ("; Job deleted" if deleted_job else ""))
