"""Experiment reconciler: gathers MLflow's state, applies the logic's decisions."""

from __future__ import annotations

import dataclasses
from typing import Any, assert_never

from mlflow_operator.api.common import EXPERIMENT_KIND_TAG, TRAINING_EXPERIMENT_KIND, ObjectIdentity
from mlflow_operator.api.experiment import ExperimentSpec, ExperimentStatus
from mlflow_operator.api.trainingrun import PLURAL as TRAINING_RUNS
from mlflow_operator.api.trainingrun import TrainingRunStatus
from mlflow_operator.logic import experiment as logic
from mlflow_operator.logic import ownership
from mlflow_operator.logic.conditions import Outcome, ReconcileProblem, progressing, ready, stalled
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.logic.trainingrun import CLOSED_RUN_STATUSES
from mlflow_operator.reconcilers.common import (
    Context,
    Services,
    owner_alive,
    resolve_target,
    shared_page_candidate,
    signed_ownership,
    verified_experiment,
)
from mlflow_operator.tracking.choice import check_pinned
from mlflow_operator.tracking.entities import (
    AlreadyExists,
    ExperimentInfo,
    InvalidRequest,
    TrackingError,
    TrackingTarget,
)


async def reconcile_experiment(ctx: Context[ExperimentSpec, ExperimentStatus]) -> Outcome:
    """Bring MLflow in line with the spec. Raises ReconcileProblem (known failure) or
    TrackingError (MLflow failed); the handlers turn both into conditions."""
    services, identity, status, spec, drift_check = ctx.services, ctx.identity, ctx.status, ctx.spec, ctx.drift_check
    target = await resolve_target(services, identity.namespace, spec.tracking)
    desired = logic.desired_experiment(spec, identity, target.workspace is not None)
    mlflow = services.mlflow
    event = ctx.event

    known_id = status.experiment_id
    if known_id:
        check_pinned(status.tracking_uri, target.uri, f"MLflow experiment {known_id}")
        binding = logic.bind_known(verified_experiment(services, target, await mlflow.get_experiment(target, known_id)),
                                   known_id, identity)
    else:
        found = verified_experiment(services, target, await mlflow.get_experiment_by_name(target, desired.name))
        alive = found is None or await owner_alive(services, found.tags, identity)
        binding = logic.bind_by_name(found, desired.name, identity, adopt=spec.adopt, owner_alive=alive)

    experiment: ExperimentInfo | None
    if binding.kind == "create":
        experiment = await _create(services, target, desired, identity, spec.adopt)
        event("Normal", "Created", f"created MLflow experiment {desired.name!r} (id {experiment.experiment_id})")
    else:
        experiment = binding.experiment
        assert experiment is not None
        if binding.kind == "adopt":
            mismatch = logic.artifact_location_mismatch(desired, experiment)
            if mismatch:
                raise ReconcileProblem(stalled(Reason.ARTIFACT_LOCATION_MISMATCH, mismatch))
            event("Normal", "Adopted",
                           f"adopted existing MLflow experiment {experiment.name!r} (id {experiment.experiment_id}), "
                           f"artifact location {experiment.artifact_location!r}")
        elif binding.kind == "restore":
            await mlflow.restore_experiment(target, experiment.experiment_id)
            event("Normal", "Restored",
                           f"restored this object's deleted MLflow experiment (id {experiment.experiment_id})")

    desired = _signed(services, target, desired, experiment.experiment_id)
    previously_managed = set(status.managed_tags or [])
    plan = logic.plan_updates(desired, experiment, previously_managed)
    if plan.rename_to:
        await _check_rename_target(services, target, experiment, plan.rename_to)
    await _apply(services, target, experiment.experiment_id, plan)
    if plan.changes and binding.kind == "use":
        if drift_check:
            event("Normal", "DriftCorrected", f"MLflow was changed outside the operator: {plan.describe()}")
        else:
            event("Normal", "Updated", plan.describe())

    experiment_id = experiment.experiment_id
    ctx.record(ExperimentStatus(
        experiment_id=experiment_id,
        experiment_name=desired.name,
        lifecycle_stage="active",
        artifact_location=experiment.artifact_location,
        url=target.experiment_url(experiment_id),
        tracking_uri=target.uri,
        managed_tags=desired.managed_keys,
    ))
    return ready(Reason.RECONCILED, f"MLflow experiment {desired.name!r} (id {experiment_id}) is in sync")


async def experiment_in_sync(services: Services, body: Any) -> bool:
    """Whether the drift check can leave this Experiment alone: Ready for its generation,
    and its MLflow experiment, in the page of its namespace's experiments that all drift
    checks share, needs no change. No MLflow call of its own; anything unexpected (a
    problem, an experiment missing from the page) is for a full reconcile to report."""
    pages = services.caches.experiment_pages
    status = ExperimentStatus.of(body)
    candidate = await shared_page_candidate(services, body, ExperimentSpec.parse, status,
                                            status.experiment_id) if pages else None
    if pages is None or candidate is None or status.experiment_id is None:
        return False
    spec, identity, target = candidate
    try:
        experiment = (await pages.experiments(services.mlflow, target, identity.namespace)).get(status.experiment_id)
    except TrackingError:
        return False
    if experiment is None or experiment.deleted:
        return False
    desired = _signed(services, target, logic.desired_experiment(spec, identity, target.workspace is not None), experiment.experiment_id)
    return not logic.plan_updates(desired, experiment, set(status.managed_tags or [])).changes


def _signed(services: Services, target: TrackingTarget, desired: logic.DesiredExperiment,
            experiment_id: str) -> logic.DesiredExperiment:
    """The ownership tags with the operator's signature over them and this experiment's id."""
    return dataclasses.replace(desired, ownership=signed_ownership(services, target, "experiment", experiment_id,
                                                                   desired.ownership))


async def _create(
    services: Services, target: TrackingTarget, desired: logic.DesiredExperiment, identity: ObjectIdentity,
    adopt: bool,
) -> ExperimentInfo:
    # Signed over its name: its id, which the lasting signature covers, is known only after.
    tags = {EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND, **desired.tags,
            **signed_ownership(services, target, "experiment-name", desired.name, desired.ownership)}
    try:
        experiment_id = await services.mlflow.create_experiment(target, desired.name, desired.artifact_location, tags)
    except AlreadyExists:
        # Created meanwhile by someone else (or by a retried request of ours): decide again.
        found = verified_experiment(services, target, await services.mlflow.get_experiment_by_name(target, desired.name))
        binding = logic.bind_by_name(found, desired.name, identity, adopt=adopt)
        if binding.experiment is None:
            raise
        return binding.experiment
    except InvalidRequest as error:
        raise ReconcileProblem(stalled(Reason.INVALID_SPEC, f"MLflow rejected the experiment: {error}")) from None
    created = await services.mlflow.get_experiment(target, experiment_id)
    assert created is not None, f"experiment {experiment_id} vanished right after creation"
    return created  # its signature comes with the plan (_signed), as its id is known only now


async def _check_rename_target(
    services: Services, target: TrackingTarget, experiment: ExperimentInfo, new_name: str
) -> None:
    holder = await services.mlflow.get_experiment_by_name(target, new_name)
    if holder is not None and holder.experiment_id != experiment.experiment_id:
        state = "a deleted" if holder.deleted else "another"
        raise ReconcileProblem(stalled(
            Reason.NAME_CONFLICT,
            f"cannot rename MLflow experiment {experiment.experiment_id} to {new_name!r}: {state} experiment "
            f"(id {holder.experiment_id}) has that name",
        ))


async def _apply(services: Services, target: TrackingTarget, experiment_id: str, plan: logic.Plan) -> None:
    mlflow = services.mlflow
    for change in plan.changes:
        try:
            match change.action:
                case "rename":
                    await mlflow.rename_experiment(target, experiment_id, change.value)
                case "set_tag":
                    await mlflow.set_experiment_tag(target, experiment_id, change.key, change.value)
                case "delete_tag":
                    await mlflow.delete_experiment_tag(target, experiment_id, change.key)
                case unknown:
                    assert_never(unknown)
        except InvalidRequest as error:
            raise ReconcileProblem(stalled(
                Reason.INVALID_SPEC, f"MLflow rejected {logic.describe_tag(change.key) if change.key else 'the rename'}: {error}"
            )) from None


async def _open_training_runs(services: Services, namespace: str, experiment_id: str) -> list[str]:
    """TrainingRuns of this namespace whose MLflow run in the experiment is not closed yet."""
    objects = await services.kube.list_objects(TRAINING_RUNS, namespace)
    return sorted(
        o["metadata"]["name"] for o in objects
        if (run := TrainingRunStatus.of(o)).experiment_id == experiment_id
        and run.run_id and run.run_status not in CLOSED_RUN_STATUSES
    )


async def delete_experiment(ctx: Context[ExperimentSpec, ExperimentStatus]) -> None:
    """Apply deletionPolicy when the object is deleted."""
    services, identity, spec = ctx.services, ctx.identity, ctx.spec
    experiment_id = ctx.status.experiment_id
    if spec.deletion_policy != "Delete" or not experiment_id:
        return
    target = await resolve_target(services, identity.namespace, spec.tracking, cleanup=True)
    experiment = verified_experiment(services, target, await services.mlflow.get_experiment(target, experiment_id))
    if experiment is None or experiment.deleted:
        return
    if not ownership.may_delete(experiment.tags, identity):
        ctx.event("Warning", "DeleteSkipped", f"MLflow experiment {experiment_id} is not owned by this object "
                  f"(owner: {ownership.describe_owner(experiment.tags)}); left in place")
        return
    open_runs = await _open_training_runs(services, identity.namespace, experiment_id)
    if open_runs:
        # Runs in a deleted experiment can no longer be closed: delete it once they are.
        raise ReconcileProblem(progressing(
            Reason.WAITING_FOR_RUNS,
            f"MLflow experiment {experiment_id} is deleted once these TrainingRuns have finished: "
            + ", ".join(open_runs[:10]) + (f" and {len(open_runs) - 10} more" if len(open_runs) > 10 else ""),
            expected=True,
        ))
    await services.mlflow.delete_experiment(target, experiment_id)
    ctx.event("Normal", "Deleted", f"soft-deleted MLflow experiment {experiment.name!r} (id {experiment_id})")
