"""What the runs of TrainingRuns and TrainingSweeps share: the experiment and server a run
is tracked in, whether a run can exist yet, how a closed one reads, and registering the
model a run logged. Used by both reconcilers (a sweep's parent run is a run too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from mlflow_operator.api.common import (
    EXPERIMENT_KIND_TAG,
    TAG_SIGNATURE,
    TAG_UID,
    TRAINING_EXPERIMENT_KIND,
    ObjectIdentity,
    TrackingSpec,
)
from mlflow_operator.api.experiment import ExperimentStatus
from mlflow_operator.api.trainingrun import ModelVersionStatus, RegisterModelSpec, TrainingRunStatus
from mlflow_operator.api.trainingsweep import TrainingSweepStatus
from mlflow_operator.logic import ownership, promotion, provenance
from mlflow_operator.logic import trainingrun as logic
from mlflow_operator.logic.conditions import READY, Outcome, ReconcileProblem, progressing, ready, stalled
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.logic.trainingrun import RunStatus
from mlflow_operator.reconcilers import promotions
from mlflow_operator.reconcilers.common import (
    Context,
    Services,
    resolve_target_and_secret,
    signed_ownership,
    verified_experiment,
    verified_model,
)
from mlflow_operator.tracking.entities import AlreadyExists, InvalidRequest, RunInfo, TrackingTarget

DUPLICATE_TAG = "mlflow.operator.dev/duplicate-of"


@dataclass(frozen=True)
class Resolved:
    experiment_id: str
    experiment_name: str
    target: TrackingTarget
    secret_name: str | None


async def owned_run(services: Services, resolved: Resolved, run_id: str, owner: ObjectIdentity,
                    what: str = "MLflow run") -> RunInfo:
    """The run `run_id`, read, only if it is in the experiment the object acts in (whose
    ownership was checked) and its own tags name `owner`'s uid. A run id from a Job's label,
    a status or an annotation is a claim anyone who writes those could make, and on a server
    without workspaces any pod can write the uid tag on any run: the experiment, which no tag
    can move a run out of, keeps another namespace's runs out of reach. Checked before the id
    is recorded and again before every write to the run."""
    run = await services.mlflow.get_run(resolved.target, run_id)
    if run is None or run.lifecycle_stage == "deleted":
        raise ReconcileProblem(stalled(Reason.RUN_DELETED_IN_MLFLOW, f"{what} {run_id} was deleted outside the operator"))
    if run.experiment_id != resolved.experiment_id:
        raise ReconcileProblem(stalled(
            Reason.RUN_CONFLICT, f"{what} {run_id} is in experiment {run.experiment_id}, not in {owner.kind} "
            f"{owner.name}'s experiment {resolved.experiment_id}; the operator leaves it untouched"))
    if run.tags.get(TAG_UID) != owner.uid:
        raise ReconcileProblem(stalled(
            Reason.RUN_CONFLICT, f"{what} {run_id} is not tagged as {owner.kind} {owner.name}'s run "
            f"({TAG_UID}); the operator leaves it untouched"))
    return run


async def owned_run_to_close(services: Services, resolved: Resolved, run_id: str, owner: ObjectIdentity,
                             what: str = "MLflow run") -> RunInfo | None:
    """As owned_run, for an object being deleted: a run deleted in MLflow leaves nothing to
    close (None); one tagged as another's is still refused."""
    try:
        return await owned_run(services, resolved, run_id, owner, what)
    except ReconcileProblem as problem:
        if problem.outcome.reason == Reason.RUN_DELETED_IN_MLFLOW:
            return None
        raise


RunStatusT = TypeVar("RunStatusT", TrainingRunStatus, TrainingSweepStatus)


def started_run_id(status: RunStatus) -> str | None:
    """The run this object started (a sweep's parent run), once recorded."""
    return status.run_id if isinstance(status, TrainingRunStatus) else status.parent_run_id


def outcome_of_closed(status: RunStatus) -> Outcome:
    ready_condition = status.condition(READY) or {}
    reason = ready_condition.get("reason", status.phase or "Succeeded")
    message = ready_condition.get("message", "")
    if status.phase == "Succeeded" and ready_condition.get("status") == "True":
        return ready(reason, message)
    return stalled(reason, message)



async def _experiment_object(ctx: Context[Any, Any]) -> dict[str, Any] | None:
    ref = ctx.spec.experiment_ref
    if ref is None:
        return None
    return await ctx.services.caches.watched.experiment(ctx.services.kube, ctx.identity.namespace, ref.name)


def _tracking_for(spec: Any, experiment_obj: dict[str, Any] | None) -> TrackingSpec | None:
    """A run uses its Experiment's server; it may bring its own Secret for it."""
    own = spec.tracking
    if experiment_obj is None:
        return own
    inherited = TrackingSpec.model_validate((experiment_obj.get("spec") or {}).get("tracking") or {})
    if own and own.uri and inherited.uri and own.uri.rstrip("/") != inherited.uri.rstrip("/"):
        raise ReconcileProblem(stalled(
            Reason.INVALID_SPEC,
            f"spec.tracking.uri {own.uri!r} differs from the server of Experiment "
            f"{experiment_obj['metadata']['name']!r} "
            f"({inherited.uri!r}); a run must be tracked where its experiment lives",
        ))
    return TrackingSpec(
        uri=(own.uri if own and own.uri else inherited.uri),
        secretRef=(own.secret_ref if own and own.secret_ref else inherited.secret_ref),
    )


def _pinned(tracking: TrackingSpec | None, status: RunStatus) -> TrackingSpec | None:
    """Once the run exists, it is tracked on the server it was created on, whatever later
    happens to the spec of its Experiment object."""
    pinned = status.tracking_uri
    if not pinned:
        return tracking
    return TrackingSpec(uri=pinned, secretRef=tracking.secret_ref if tracking else None)


async def resolve_experiment(ctx: Context[Any, RunStatusT]) -> Resolved:
    """The experiment and server for the run (of a TrainingRun, or the parent run of a
    TrainingSweep: the spec has experimentRef/experimentName and tracking). Before the run
    starts, an experimentRef must be Ready; afterwards the run goes on whatever happens to
    the Experiment object."""
    spec, identity, status = ctx.spec, ctx.identity, ctx.status
    experiment_obj = await _experiment_object(ctx)
    started = bool(started_run_id(status) and status.experiment_id)
    if spec.experiment_ref and not started:
        name = spec.experiment_ref.name
        if experiment_obj is None:
            # Its Ready status wakes this run (handlers/trainingrun.py), and the refresh timer.
            raise ReconcileProblem(progressing(
                Reason.EXPERIMENT_NOT_FOUND, f"Experiment {name!r} not found in namespace {identity.namespace!r}",
                expected=True, awaited=True,
            ))
        exp_status = ExperimentStatus.of(experiment_obj)
        exp_ready = exp_status.condition(READY) or {}
        if exp_ready.get("status") != "True" or not exp_status.experiment_id:
            why = f": {exp_ready.get('reason')}: {exp_ready.get('message')}" if exp_ready else ""
            exp_stalled = exp_status.is_true("Stalled")
            # An Experiment applied together with the run is normal progress, not a problem.
            raise ReconcileProblem(progressing(Reason.EXPERIMENT_NOT_READY, f"Experiment {name!r} is not Ready{why}",
                                               expected=not exp_stalled, awaited=True))
    target, secret_name = await resolve_target_and_secret(
        ctx.services, identity.namespace, _pinned(_tracking_for(spec, experiment_obj), status),
        cleanup=ctx.cleanup,
    )
    if started:
        assert status.experiment_id is not None
        return Resolved(status.experiment_id, status.experiment_name or "", target, secret_name)
    if experiment_obj is not None:  # spec.experiment_ref, found and Ready (checked above)
        ready_experiment = ExperimentStatus.of(experiment_obj)
        assert ready_experiment.experiment_id is not None
        return Resolved(ready_experiment.experiment_id, ready_experiment.experiment_name or "", target, secret_name)
    return await _experiment_by_name(ctx, target, secret_name)


async def _experiment_by_name(ctx: Context[Any, Any], target: TrackingTarget, secret_name: str | None) -> Resolved:
    name = ctx.spec.experiment_name
    assert name is not None
    if target.workspace is None:
        ownership.refuse_other_namespace_prefix(name, ctx.identity.namespace, "spec.experimentName")
    services, mlflow = ctx.services, ctx.services.mlflow
    experiment = await mlflow.get_experiment_by_name(target, name)
    if experiment is None:
        # Owned by the namespace: an Experiment object of this namespace may take it over.
        tags = ownership.namespace_tags(ctx.identity)
        try:
            # Signed over its name first (a crash right after leaves it provably the namespace's),
            # then over the id the create returns.
            created = await mlflow.create_experiment(target, name, None, {
                EXPERIMENT_KIND_TAG: TRAINING_EXPERIMENT_KIND,
                **signed_ownership(services, target, "experiment-name", name, tags)})
            signed = signed_ownership(services, target, "experiment", created, tags)
            await mlflow.set_experiment_tag(target, created, TAG_SIGNATURE, signed[TAG_SIGNATURE])
        except AlreadyExists:
            pass
        except InvalidRequest as error:
            raise ReconcileProblem(stalled(Reason.INVALID_SPEC, f"MLflow rejected experiment {name!r}: {error}")) from None
        experiment = await mlflow.get_experiment_by_name(target, name)
        if experiment is None:
            raise ReconcileProblem(progressing(Reason.EXPERIMENT_NOT_FOUND, f"MLflow experiment {name!r} vanished"))
    experiment = verified_experiment(services, target, experiment)
    assert experiment is not None
    ownership.use_for_namespace(experiment.tags, ctx.identity,
                                f"MLflow experiment {name!r} (id {experiment.experiment_id})")
    if experiment.deleted:
        raise ReconcileProblem(stalled(
            Reason.EXPERIMENT_DELETED,
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted; restore it or choose another",
        ))
    return Resolved(experiment.experiment_id, experiment.name, target, secret_name)


# Allowance for the clocks of the API server (creationTimestamp) and the operator's host.
CLOCK_MARGIN_SECONDS = 30


def no_run_can_exist(ctx: Context[Any, Any]) -> bool:
    """Whether this object cannot have an MLflow run yet, so starting it needs no search by
    its uid tag: it was created after this process started, and this process has not tried
    to create its run. Without peering only one process works at a time (the chart's
    Recreate strategy), so no other one can have tried since. With peering, a standby that
    takes over did not see what the active replica did: it always searches. A twin left by
    two processes working at once anyway (which the chart prevents) is not deleted: only
    the twin of a retried POST (same start time) is, when the run is closed."""
    services = ctx.services
    if services.config.peering is not None or ctx.created_at is None or ctx.identity.uid in services.caches.run_attempts:
        return False
    return ctx.created_at.timestamp() > services.caches.started_at + CLOCK_MARGIN_SECONDS


async def register_model(ctx: Context[Any, Any], resolved: Resolved, run: RunInfo,
                         spec: RegisterModelSpec) -> Registration:
    """Create (once) the model version from the run's logged model and point the aliases at it,
    in a registered model of this namespace only (a TrainingRun's registerModel, a
    TrainingSweep's registerBest). `run` was read and its owner checked (owned_run)."""
    mlflow, target, identity = ctx.services.mlflow, resolved.target, ctx.identity
    run_id = run.run_id
    models = await mlflow.logged_models_of_run(target, resolved.experiment_id, run_id)
    model = logic.pick_logged_model(models, spec.artifact_path)
    if model is None:
        found = ", ".join(sorted({m.name for m in models})) or "none"
        raise ReconcileProblem(stalled(
            Reason.MODEL_NOT_FOUND,
            f"MLflow run {run_id} logged no model named {spec.artifact_path!r} (logged models: {found}); "
            f"log it with mlflow.<flavor>.log_model(..., name={spec.artifact_path!r}) or set "
            "registerModel.artifactPath",
        ))
    source = f"models:/{model.model_id}"
    registered = verified_model(ctx.services, target, await mlflow.get_registered_model(target, spec.name))
    if registered is None:
        try:
            registered = await mlflow.create_registered_model(target, spec.name, signed_ownership(
                ctx.services, target, "registered-model", spec.name, ownership.namespace_tags(identity)), None)
        except AlreadyExists:
            registered = verified_model(ctx.services, target, await mlflow.get_registered_model(target, spec.name))
        except InvalidRequest as error:
            raise ReconcileProblem(stalled(Reason.INVALID_SPEC, f"MLflow rejected model {spec.name!r}: {error}")) from None
        if registered is None:
            raise ReconcileProblem(progressing(Reason.MODEL_NOT_FOUND, f"registered model {spec.name!r} vanished"))
    ownership.use_for_namespace(registered.tags, identity, f"registered model {spec.name!r}")
    versions = await mlflow.model_versions(target, spec.name)
    version = next((v for v in versions if v.run_id == run_id and v.source == source), None)
    if version is None:
        version = await mlflow.create_model_version(
            target, spec.name, source, run_id, model.model_id, {**spec.tags, **identity.tags()}
        )
        ctx.event("Normal", "ModelRegistered", f"registered {spec.name} version {version.version} "
                                                      f"from {source}")
    # Aliases obey the namespace's promotion policy for this model and are audited, as a
    # RegisteredModel's are; one that stays put does not fail the run.
    actor = promotion.Actor(identity.kind, identity.namespace, identity.name, ctx.metadata.get("generation"),
                            provenance.gitops_source(ctx.metadata))
    evidence = promotions.evidence_reader(ctx.services, target, versions + [version], {run_id: run})
    moves = await promotions.move_aliases(ctx.services, target, identity.namespace, spec.name, spec.aliases,
                                          version, registered.aliases, evidence, actor, ctx.event)
    for why in moves.blocked:
        ctx.event("Warning", "PromotionBlocked", why)
    uri = f"models:/{spec.name}/{version.version}"
    return Registration(ModelVersionStatus(name=spec.name, version=version.version, uri=uri), moves.blocked)


@dataclass(frozen=True)
class Registration:
    """The model version a run registered (as status shows it), and why any alias stayed put."""

    version: ModelVersionStatus
    blocked: tuple[str, ...] = ()

    def describe(self) -> str:
        text = f"registered {self.version.uri}"
        return text + "".join(f"; {why}" for why in self.blocked)


