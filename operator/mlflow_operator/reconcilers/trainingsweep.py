"""TrainingSweep reconciler: parent run -> trials (TrainingRuns it owns) -> best trial ->
close the parent run -> register the best model.

Level-based like the other kinds: each trigger (create, resume, a trial's phase change, the
timer) lists the sweep's trials and takes the next step. The parent run is recorded in
status before any trial exists (found again by its `k8s.uid` tag after a crash), trials
have fixed names (`<sweep>-<index>`, a second create is a 409), and trial i's parameters
are a pure function of the spec and i: a restart at any point neither loses nor
duplicates a trial, a child run or the parent run.
"""

from __future__ import annotations

import time
from typing import Any

from mlflow_operator.api.common import TAG_UID, ObjectIdentity
from mlflow_operator.api.trainingrun import PLURAL as TRAINING_RUNS
from mlflow_operator.api.trainingsweep import LABEL_SWEEP, BestTrialStatus, TrainingSweepSpec, TrainingSweepStatus
from mlflow_operator.gateways.kubernetes import KubernetesError
from mlflow_operator.logic import provenance, timestamps
from mlflow_operator.logic import trainingrun as run_logic
from mlflow_operator.logic import trainingsweep as logic
from mlflow_operator.logic.conditions import Outcome, ReconcileProblem, progressing, ready, stalled
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.reconcilers import common
from mlflow_operator.reconcilers.common import (
    Context,
    owned_run,
    owned_run_to_close,
)
from mlflow_operator.reconcilers.runs import (
    DUPLICATE_TAG,
    Resolved,
    no_run_can_exist,
    outcome_of_closed,
    register_model,
    resolve_experiment,
)


def parse_spec(raw_spec: Any) -> TrainingSweepSpec:
    return common.parse_spec(_parse_sweep, raw_spec)


def _parse_sweep(raw_spec: Any) -> TrainingSweepSpec:
    spec = TrainingSweepSpec.parse(raw_spec)
    both = sorted(set(spec.params) & set(spec.parameters))
    if both:
        raise ValueError(f"{', '.join(both)}: both fixed (params) and searched (parameters)")
    if not spec.parameters:
        raise ValueError("parameters: name at least one parameter to search")
    run_logic.param_env({**spec.params, **dict.fromkeys(spec.parameters, "")})  # colliding env names
    logic.trial_count(spec)  # a search space the operator cannot enumerate is Stalled here
    return spec


async def reconcile_training_sweep(ctx: Context[TrainingSweepSpec, TrainingSweepStatus]) -> Outcome:
    spec, status = ctx.spec, ctx.status
    # Closed as a TrainingRun is: ended, the (parent) run closed, the model registered if asked.
    if run_logic.is_closed(status, registers_model=spec.register_best is not None):
        return outcome_of_closed(status)
    total = logic.trial_count(spec)
    resolved = await resolve_experiment(ctx)
    parent_run_id = await _ensure_parent_run(ctx, resolved)
    trials = await _trials(ctx)
    plan = logic.plan(total, trials, spec.parallelism, spec.max_failed_trials)
    for index in plan.create:
        await _create_trial(ctx, index, parent_run_id)
    best = logic.best_trial(trials, spec.objective.metric, spec.objective.goal)
    ctx.record(TrainingSweepStatus(phase="Running", trials=plan.counts.as_status()))
    if best is not None:
        ctx.record(TrainingSweepStatus(best_trial=_best_status(best, spec.objective.metric)))
    if not plan.over:
        counts = plan.counts
        message = (f"{counts.succeeded + counts.failed}/{counts.total} trials done ({counts.failed} failed), "
                   f"{plan.unfinished} started and not ended (parallelism {spec.parallelism})")
        if plan.stopped_because:
            message += f"; {plan.stopped_because}: no further trials start"
        return progressing(Reason.RUNNING, message, awaited=True, expected=True)
    return await _close(ctx, resolved, parent_run_id, plan, best)


def _best_status(best: logic.TrialView, metric: str) -> BestTrialStatus:
    return BestTrialStatus(name=best.name, index=best.index, run_id=best.run_id, params=dict(best.params),
                           metric=f"{metric}={best.metrics[metric]:.6g}", value=best.metrics[metric])


async def _ensure_parent_run(ctx: Context[TrainingSweepSpec, TrainingSweepStatus], resolved: Resolved) -> str:
    """The parent run: created once, recorded in status before any trial names it."""
    known = ctx.status.parent_run_id
    if known:
        return known
    mlflow, target, identity = ctx.services.mlflow, resolved.target, ctx.identity
    runs = [] if no_run_can_exist(ctx) else await mlflow.find_runs_by_tag(
        target, resolved.experiment_id, TAG_UID, identity.uid)
    run, duplicates = run_logic.canonical_run(runs)
    if run is None:
        ctx.services.caches.run_attempts.add(identity.uid)
        run = await mlflow.create_run(
            target, resolved.experiment_id, ctx.spec.run_name or identity.name,
            {**logic.parent_run_tags(ctx.spec, identity), **provenance.source_run_tags(ctx.metadata)},
            start_time_ms=int(time.time() * 1000),
        )
    for duplicate in duplicates:  # twins of a retried create_run POST
        await mlflow.set_run_tag(target, duplicate.run_id, DUPLICATE_TAG, run.run_id)
        await mlflow.delete_run(target, duplicate.run_id)
    ctx.record(TrainingSweepStatus(
        phase="Running",
        parent_run_id=run.run_id,
        experiment_id=resolved.experiment_id,
        experiment_name=resolved.experiment_name,
        tracking_uri=target.uri,
        url=target.run_url(resolved.experiment_id, run.run_id),
        start_time=timestamps.now_rfc3339(),
    ))
    await ctx.checkpoint("parent-run")
    ctx.event("Normal", "Started", f"created parent MLflow run {run.run_id} in experiment "
                                   f"{resolved.experiment_name!r} ({resolved.experiment_id})")
    return run.run_id


def _owned(body: dict[str, Any], identity: ObjectIdentity) -> bool:
    sweep = logic.controller_sweep(body["metadata"])
    return sweep is not None and sweep.get("uid") == identity.uid


async def _trials(ctx: Context[TrainingSweepSpec, TrainingSweepStatus]) -> dict[int, logic.TrialView]:
    """The sweep's trials as their TrainingRuns show them now (a TrainingRun of another
    sweep of the same name, e.g. one deleted and re-created, is not one of them)."""
    identity = ctx.identity
    children = await ctx.services.kube.list_objects(TRAINING_RUNS, identity.namespace,
                                                    label_selector=f"{LABEL_SWEEP}={identity.name}")
    trials: dict[int, logic.TrialView] = {}
    for child in children:
        view = logic.trial_view(child) if _owned(child, identity) else None
        if view is not None and child["metadata"]["name"] == logic.trial_name(identity.name, view.index):
            trials[view.index] = view
    return trials


async def _create_trial(ctx: Context[TrainingSweepSpec, TrainingSweepStatus], index: int, parent_run_id: str) -> None:
    spec, identity, kube = ctx.spec, ctx.identity, ctx.services.kube
    params = logic.trial_params(spec, index, logic.seed_source(spec, identity.uid))
    body = logic.trial_body(spec, identity, ctx.metadata, index, params, parent_run_id)
    name = body["metadata"]["name"]
    try:
        await kube.create_object(TRAINING_RUNS, identity.namespace, body)
    except KubernetesError as error:
        if error.status != 409:
            raise
        existing = await kube.get_object(TRAINING_RUNS, identity.namespace, name)
        if existing is not None and not _owned(existing, identity):
            raise ReconcileProblem(stalled(
                Reason.TRIAL_CONFLICT, f"a TrainingRun named {name!r} exists and is not a trial of this TrainingSweep; "
                "delete or rename it")) from None
        return  # created by an earlier attempt
    shown = ", ".join(f"{name}={params[name]}" for name in sorted(spec.parameters))
    ctx.event("Normal", "TrialCreated", f"created trial {name} ({shown})")


async def _close(ctx: Context[TrainingSweepSpec, TrainingSweepStatus], resolved: Resolved, parent_run_id: str, plan: logic.Plan,
                 best: logic.TrialView | None) -> Outcome:
    """Every trial has ended: the parent run gets the best trial's params and objective
    metric and ends FINISHED, or FAILED when too many trials failed or none is usable; then
    the best model is registered."""
    spec, status, mlflow, target = ctx.spec, ctx.status, ctx.services.mlflow, resolved.target
    metric = spec.objective.metric
    counts = plan.counts
    failure: tuple[str, str] | None = None
    if plan.stopped_because:
        failure = (Reason.TOO_MANY_FAILED_TRIALS, f"{plan.stopped_because}: no further trials were started")
    elif counts.succeeded == 0:
        failure = (Reason.NO_TRIAL_SUCCEEDED, f"none of the {counts.total} trials succeeded")
    elif best is None:
        failure = (Reason.OBJECTIVE_MISSING, f"no succeeded trial logged the objective metric {metric!r}")
    run_status = "FAILED" if failure else "FINISHED"
    if not status.run_status:
        run = await owned_run(ctx.services, target, parent_run_id, ctx.identity, "parent MLflow run")
        if best is not None and run.metrics.get(metric) != best.metrics[metric]:
            params = {k: v for k, v in best.params.items() if k not in run.params}
            await mlflow.log_params_and_tags(
                target, parent_run_id, params,
                {logic.TAG_BEST_TRIAL: best.name, logic.TAG_BEST_RUN: best.run_id or ""},
                metrics={metric: best.metrics[metric]})
        if run.status != run_status or run.end_time is None:
            await mlflow.set_run_status(target, parent_run_id, run_status, run.end_time or int(time.time() * 1000))
        ctx.record(TrainingSweepStatus(run_status=run_status, completion_time=timestamps.now_rfc3339()))
    ctx.record(TrainingSweepStatus(phase="Failed" if failure else "Succeeded"))
    summary = f"{counts.succeeded} of {counts.total} trials succeeded"
    if failure:
        reason, message = failure
        return stalled(reason, f"{message}; {summary}; parent MLflow run {parent_run_id} marked FAILED")
    assert best is not None
    message = f"best trial {best.name} ({metric}={best.metrics[metric]:.6g}); {summary}"
    if spec.register_best is not None:
        await ctx.checkpoint("run-closed")  # kept even if registration fails below
        assert best.run_id is not None
        trial = ObjectIdentity(kind="TrainingRun", namespace=ctx.identity.namespace, name=best.name, uid=best.uid)
        best_run = await owned_run(ctx.services, target, best.run_id, trial, f"trial {best.name}'s MLflow run")
        registration = await register_model(ctx, resolved, best_run, spec.register_best)
        ctx.record(TrainingSweepStatus(model_version=registration.version))
        message += f"; {registration.describe()}"
    ctx.event("Normal", "Succeeded", message)
    return ready(Reason.SUCCEEDED, message)


# --------------------------------------------------------------------------- deletion


async def kill_training_sweep(ctx: Context[TrainingSweepSpec, TrainingSweepStatus]) -> None:
    """The sweep is being deleted: its trials go with it (ownerReferences; each one's run is
    closed KILLED by its own deletion) and a parent run still open is closed KILLED."""
    services, identity, status = ctx.services, ctx.identity, ctx.status
    run_id = status.parent_run_id
    if not run_id or status.run_status:
        return
    resolved = await resolve_experiment(ctx)
    run = await owned_run_to_close(services, resolved.target, run_id, identity, "parent MLflow run")
    if run is not None and run.status not in run_logic.CLOSED_RUN_STATUSES:
        await services.mlflow.set_run_status(resolved.target, run_id, "KILLED", int(time.time() * 1000))
    ctx.event("Normal", "Killed", f"deleted mid-sweep: parent MLflow run {run_id} marked KILLED; its trials are "
                                  "deleted with it")
