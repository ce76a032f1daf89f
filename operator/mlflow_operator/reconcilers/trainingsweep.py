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

import asyncio
import time
from typing import Any

from mlflow_operator.api.common import TAG_UID, ObjectIdentity
from mlflow_operator.api.trainingrun import PLURAL as TRAINING_RUNS
from mlflow_operator.api.trainingsweep import (
    ANNOTATION_STOP,
    LABEL_SWEEP,
    BestTrialStatus,
    TrainingSweepSpec,
    TrainingSweepStatus,
)
from mlflow_operator.gateways.kubernetes import KubernetesError
from mlflow_operator.logic import provenance, timestamps
from mlflow_operator.logic import trainingrun as run_logic
from mlflow_operator.logic import trainingsweep as logic
from mlflow_operator.logic.conditions import Outcome, ReconcileProblem, progressing, ready, stalled
from mlflow_operator.logic.reasons import Reason
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
    total = logic.trial_count(spec)
    # Closed as a TrainingRun is: ended, the (parent) run closed, the model registered if
    # asked; unless maxTrials was raised since (an extended sweep runs again).
    extended = status.trials is not None and total > status.trials.total
    if run_logic.is_closed(status, registers_model=spec.register_best is not None) and not extended:
        return outcome_of_closed(status)
    resolved = await resolve_experiment(ctx)
    parent_run_id = await _ensure_parent_run(ctx, resolved)
    if status.run_status and extended:
        assert status.trials is not None
        await _reopen(ctx, resolved, parent_run_id, status.trials.total, total)
    trials = await _trials(ctx)
    plan = logic.plan(total, trials, spec.parallelism, spec.max_failed_trials)
    await _stop_trials(ctx, resolved, trials, plan)
    suggested: dict[int, dict[str, str]] = {}
    for index in plan.create:
        suggested[index] = await _create_trial(ctx, index, parent_run_id, trials, suggested)
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


async def _reopen(ctx: Context[TrainingSweepSpec, TrainingSweepStatus], resolved: Resolved, parent_run_id: str,
                  before: int, total: int) -> None:
    """maxTrials was raised on an ended sweep: its parent run runs again (it is closed again,
    with the best trial then, when the new trials have ended)."""
    run = await owned_run(ctx.services, resolved, parent_run_id, ctx.identity, "parent MLflow run")
    if run.status != "RUNNING":
        await ctx.services.mlflow.set_run_status(resolved.target, parent_run_id, "RUNNING", None)
    ctx.record(TrainingSweepStatus(phase="Running", run_status=None, completion_time=None))
    ctx.event("Normal", Reason.EXTENDED, f"maxTrials raised: {total - before} more trials ({before} -> {total}); "
                                         f"parent MLflow run {parent_run_id} reopened")


async def _stop_trials(ctx: Context[TrainingSweepSpec, TrainingSweepStatus], resolved: Resolved,
                       trials: dict[int, logic.TrialView], plan: logic.Plan) -> None:
    """Stop the trials that should not run on: every unfinished one once too many failed, or
    (median stopping) running ones doing worse than the completed ones did by the same step."""
    spec = ctx.spec
    stops: dict[int, str] = {}
    if plan.stopped_because:
        stops = {i: f"the sweep stopped: {plan.stopped_because}" for i, t in trials.items() if not t.ended}
    elif spec.early_stopping is not None:
        stops = await _median_stops(ctx, resolved, trials)
    # Those stopped earlier whose Job started since are stopped again (their Job deleted).
    stops.update({i: t.stop for i, t in trials.items() if t.stop and not t.ended and i not in stops})
    for index, reason in sorted(stops.items()):
        await _stop_trial(ctx, trials[index], reason)


async def _median_stops(ctx: Context[TrainingSweepSpec, TrainingSweepStatus], resolved: Resolved,
                        trials: dict[int, logic.TrialView]) -> dict[int, str]:
    """Median stopping's decision, from the objective's history: one read per running trial
    per check, and one per ended trial per process (EndedHistories)."""
    spec, mlflow, histories = ctx.spec, ctx.services.mlflow, ctx.services.caches.ended_histories
    stopping, metric = spec.early_stopping, spec.objective.metric
    assert stopping is not None
    running = [t for t in trials.values() if t.phase == "Running" and t.run_id and not t.stop]
    if not running:
        return {}
    completed: dict[int, logic.History] = {}
    for trial in trials.values():
        if trial.phase == "Succeeded" and trial.run_id:
            known = histories.get(trial.run_id, metric)
            if known is None:
                known = await mlflow.metric_history(resolved.target, trial.run_id, metric)
                histories.put(trial.run_id, metric, known)
            completed[trial.index] = known
    if len(completed) < stopping.min_trials_required:
        return {}
    current = {t.index: await mlflow.metric_history(resolved.target, t.run_id or "", metric) for t in running}
    return logic.median_stops(current, completed, spec.objective.goal, stopping.min_trials_required,
                              stopping.start_step)


async def _stop_trial(ctx: Context[TrainingSweepSpec, TrainingSweepStatus], trial: logic.TrialView, reason: str) -> None:
    """Say why on the trial (its stop annotation), then delete its Job: the trial records the
    Job's end as EarlyStopped and closes its run KILLED. A trial without a Job yet does not
    start one."""
    kube, namespace = ctx.services.kube, ctx.identity.namespace
    if trial.stop != reason:
        await kube.annotate_object(TRAINING_RUNS, namespace, trial.name, {ANNOTATION_STOP: reason})
        ctx.event("Normal", Reason.EARLY_STOPPED, f"stopping trial {trial.name}: {reason}")
    if trial.job_uid:
        # Foreground: the Job goes only once its pods have, so the trial closes its run after
        # the training code can no longer end it itself.
        await kube.delete_job(namespace, trial.name, propagation="Foreground", uid=trial.job_uid)


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


async def _create_trial(ctx: Context[TrainingSweepSpec, TrainingSweepStatus], index: int, parent_run_id: str,
                        trials: dict[int, logic.TrialView], suggested: dict[int, dict[str, str]]) -> dict[str, str]:
    """Create trial `index` (its values from the search; for TPE, from the trials recorded
    and those suggested earlier in this pass); the values it was created with."""
    spec, identity, kube = ctx.spec, ctx.identity, ctx.services.kube
    seed = logic.seed_source(spec, identity.uid)
    if spec.algorithm.type == "tpe":
        history = logic.observations(spec, trials, suggested)
        params = await asyncio.to_thread(logic.trial_params, spec, index, seed, history)
    else:
        params = logic.trial_params(spec, index, seed)
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
        # Created by an earlier attempt: its values are the ones it has.
        return dict((existing or {}).get("spec", {}).get("params") or params)
    shown = ", ".join(f"{name}={params[name]}" for name in sorted(spec.parameters))
    ctx.event("Normal", "TrialCreated", f"created trial {name} ({shown})")
    return params


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
        run = await owned_run(ctx.services, resolved, parent_run_id, ctx.identity, "parent MLflow run")
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
        best_run = await owned_run(ctx.services, resolved, best.run_id, trial, f"trial {best.name}'s MLflow run")
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
    run = await owned_run_to_close(services, resolved, run_id, identity, "parent MLflow run")
    if run is not None and run.status not in run_logic.CLOSED_RUN_STATUSES:
        await services.mlflow.set_run_status(resolved.target, run_id, "KILLED", int(time.time() * 1000))
    ctx.event("Normal", "Killed", f"deleted mid-sweep: parent MLflow run {run_id} marked KILLED; its trials are "
                                  "deleted with it")
