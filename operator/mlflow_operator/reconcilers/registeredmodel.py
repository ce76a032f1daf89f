"""RegisteredModel reconciler: the registry follows the spec; the status mirrors the registry."""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, assert_never

from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.api.registeredmodel import RegisteredModelSpec, RegisteredModelStatus, default_model_name
from mlflow_operator.gateways.protocols import MlflowApi
from mlflow_operator.logic import ownership, promotion, provenance
from mlflow_operator.logic import registeredmodel as logic
from mlflow_operator.logic.conditions import Outcome, ReconcileProblem, progressing, ready, stalled
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.reconcilers import promotions
from mlflow_operator.reconcilers.common import (
    Context,
    EventSink,
    Services,
    owner_alive,
    resolve_target,
    shared_page_candidate,
    signed_ownership,
    verified_model,
)
from mlflow_operator.tracking.choice import check_pinned
from mlflow_operator.tracking.entities import (
    AlreadyExists,
    InvalidRequest,
    ModelVersionInfo,
    RegisteredModelInfo,
    TrackingError,
    TrackingTarget,
)

# Condition types of their own (besides Ready, Reconciling, Stalled).
VERSION_NOT_FOUND = "VersionNotFound"
DRIFTED = "Drifted"
PROMOTION_BLOCKED = "PromotionBlocked"
EXTRA_CONDITIONS = (VERSION_NOT_FOUND, DRIFTED, PROMOTION_BLOCKED)


async def reconcile_registered_model(ctx: Context[RegisteredModelSpec, RegisteredModelStatus]) -> Outcome:
    services, identity, status, spec, drift_check = ctx.services, ctx.identity, ctx.status, ctx.spec, ctx.drift_check
    target = await resolve_target(services, identity.namespace, spec.tracking)
    desired = _desired(services, target, spec, identity)
    mlflow = services.mlflow
    event = ctx.event

    if status.model_name:
        check_pinned(status.tracking_uri, target.uri, f"registered model {status.model_name!r}")
    model, kind = await _bind(services, target, desired, spec, identity, status, event)

    versions = await mlflow.model_versions(target, desired.name)
    plan = logic.plan(desired, model, versions, logic.Managed.from_status(status))
    plan, blocked = await _hold_back_blocked_promotions(services, target, spec, model, versions, plan)
    actor = promotion.Actor(identity.kind, identity.namespace, identity.name, ctx.metadata.get("generation"),
                            provenance.gitops_source(ctx.metadata))
    audited: list[dict[str, Any]] = []
    extra = await _apply_plan(services, target, desired, plan, status, event,
                              observe_only=drift_check and spec.drift_policy == "Observe" and kind == "use",
                              announce=(kind == "use"), drift_check=drift_check,
                              actor=actor, audited=audited)
    if blocked:
        message = "; ".join(blocked)
        extra[PROMOTION_BLOCKED] = ("True", PROMOTION_BLOCKED, message)
        previous = next((c for c in status.conditions or [] if c.get("type") == PROMOTION_BLOCKED), None)
        if not previous or previous.get("message") != message:
            event("Warning", PROMOTION_BLOCKED, message)
    if plan.changes:
        model = await mlflow.get_registered_model(target, desired.name) or model
        versions = await mlflow.model_versions(target, desired.name)

    view = logic.status_view(model, versions, frozenset(desired.versions))
    # What this object declares (and exists) is what it may later remove, drift or not.
    status_update = {**view, **logic.managed_status(plan.managed), "url": target.model_url(desired.name),
                     "trackingUri": target.uri,
                     "missingVersions": sorted(plan.missing, key=int) or None}
    if audited:
        status_update["lastPromotion"] = audited[-1]
    # status_view is also what the drift check compares with the stored status, as JSON.
    ctx.record(RegisteredModelStatus.model_validate(status_update))
    return _outcome(desired, plan, extra, len(versions))


async def _hold_back_blocked_promotions(
    services: Services, target: TrackingTarget, spec: RegisteredModelSpec, model: RegisteredModelInfo,
    versions: list[ModelVersionInfo], plan: logic.Plan,
) -> tuple[logic.Plan, list[str]]:
    """The plan without the alias moves that fail the alias's promotion rule, and why each
    failed. Reads the source runs of the candidate and of the version holding the alias."""
    evidence = promotions.evidence_reader(services, target, versions)
    kept: list[logic.Change] = []
    blocked: list[str] = []
    for change in plan.changes:
        rule = spec.promotion.get(change.key) if change.action == "set_alias" else None
        why = rule and await promotions.verdict(rule, change.key, change.value, model.aliases.get(change.key),
                                                evidence)
        if why:
            blocked.append(why)
        else:
            kept.append(change)
    return dataclasses.replace(plan, changes=kept), blocked


async def registered_model_in_sync(services: Services, body: Any) -> bool:
    """Whether the drift check can leave this RegisteredModel alone: Ready for its generation,
    and its registered model and versions, in the page of its namespace's models that all
    drift checks share, need no change and show what status shows. No MLflow call of its own;
    anything else (a problem, a model missing from the page) is for a full reconcile."""
    pages = services.caches.model_pages
    stored, status = body.get("status") or {}, RegisteredModelStatus.of(body)
    candidate = await shared_page_candidate(services, body, RegisteredModelSpec.parse, status,
                                            status.model_name) if pages else None
    if pages is None or candidate is None:
        return False
    spec, identity, target = candidate
    try:
        desired = _desired(services, target, spec, identity)
        if desired.name != status.model_name:
            return False
        cache = services.caches.watched.registered_models

        def tagged() -> set[tuple[str, str]]:
            return versions_with_tags(cache.values_in(identity.namespace) if cache is not None else [body])

        found = (await pages.models(services.mlflow, target, identity.namespace, tagged)).get(desired.name)
    except (ReconcileProblem, TrackingError):
        return False
    if found is None:
        return False
    plan = logic.plan(desired, found.model, found.versions, logic.Managed.from_status(status))
    if plan.changes or plan.missing:
        return False
    view = without_nulls(logic.status_view(found.model, found.versions, frozenset(desired.versions)))
    return all(stored.get(key) == value for key, value in view.items())


def versions_with_tags(bodies: Iterable[dict[str, Any]]) -> set[tuple[str, str]]:
    """(model name, version number) of each version whose tags these RegisteredModels declare
    or still manage: a drift check reads them on every pass, since a tag changed by hand
    moves none of MLflow's timestamps."""
    found: set[tuple[str, str]] = set()
    for body in bodies:
        spec, status = body.get("spec") or {}, RegisteredModelStatus.of(body)
        name = spec.get("name") or default_model_name(body["metadata"]["name"])
        found |= {(name, str(v.get("version"))) for v in spec.get("versions") or [] if v.get("tags")}
        found |= {(name, str(version)) for version in status.managed_version_tags or {}}
    return found


def without_nulls(value: Any) -> Any:
    """`value` as the API server stores it: a null field is dropped, not kept."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def _desired(services: Services, target: TrackingTarget, spec: RegisteredModelSpec,
             identity: ObjectIdentity) -> logic.DesiredModel:
    """What the spec declares, with the ownership tags signed over the model's name."""
    desired = logic.desired_model(spec, identity)
    return dataclasses.replace(desired, ownership=signed_ownership(services, target, "registered-model", desired.name,
                                                                   desired.ownership))


async def _bind(services: Services, target: TrackingTarget, desired: logic.DesiredModel, spec: RegisteredModelSpec,
                identity: ObjectIdentity, status: RegisteredModelStatus,
                event: EventSink) -> tuple[RegisteredModelInfo, str]:
    """The registered model this object manages: found and owned, adopted, or created."""
    mlflow = services.mlflow
    model = verified_model(services, target, await mlflow.get_registered_model(target, desired.name))
    alive = model is None or await owner_alive(services, model.tags, identity)
    kind = logic.bind(model, desired.name, identity, known=status.model_name == desired.name,
                      adopt=spec.adopt, owner_alive=alive)
    if kind == "create":
        try:
            model = await mlflow.create_registered_model(
                target, desired.name, {**desired.tags, **desired.ownership}, desired.description
            )
            event("Normal", "Created", f"created registered model {desired.name!r}")
        except AlreadyExists:  # created meanwhile by someone else: decide again
            model = verified_model(services, target, await mlflow.get_registered_model(target, desired.name))
            kind = logic.bind(model, desired.name, identity, known=False, adopt=spec.adopt)
        except InvalidRequest as error:
            raise ReconcileProblem(stalled(Reason.INVALID_SPEC, f"MLflow rejected the model: {error}")) from None
    elif kind == "adopt":
        event("Normal", "Adopted", f"adopted existing registered model {desired.name!r}")
    assert model is not None
    return model, kind


async def _apply_plan(services: Services, target: TrackingTarget, desired: logic.DesiredModel, plan: logic.Plan,
                      status: RegisteredModelStatus, event: EventSink, *, observe_only: bool, announce: bool,
                      drift_check: bool, actor: promotion.Actor,
                      audited: list[dict[str, Any]]) -> dict[str, tuple[str, str, str]]:
    """Apply the plan; with driftPolicy Observe, report drift instead of restoring it.
    Returns the extra conditions to set."""
    extra: dict[str, tuple[str, str, str]] = {}
    # Changes that waited for a declared version to appear are the spec's, not drift.
    waiting = set(status.missing_versions or ())
    pending = [c for c in plan.changes if c.target_version in waiting]
    drift = [c for c in plan.changes if c.target_version not in waiting]
    if pending:
        await _apply(services, target, desired, logic.Plan(pending), actor, event, audited)
        event("Normal", "Updated", "set " + logic.Plan(pending).describe() + " (the version now exists)")
    if not drift:
        return extra
    text = logic.Plan(drift).describe()
    if observe_only:
        extra[DRIFTED] = ("True", Reason.DRIFT_DETECTED, f"MLflow differs from the spec: {text}")
        previous = next((c for c in status.conditions or [] if c.get("type") == DRIFTED), None)
        if not previous or previous.get("message") != extra[DRIFTED][2]:
            event("Warning", Reason.DRIFT_DETECTED, f"MLflow differs from the spec (driftPolicy Observe): {text}")
        return extra
    await _apply(services, target, desired, logic.Plan(drift), actor, event, audited)
    if announce:
        if drift_check:
            event("Normal", "DriftCorrected", f"MLflow was changed outside the operator; restored {text}")
        else:
            event("Normal", "Updated", f"set {text}")
    return extra


def _outcome(desired: logic.DesiredModel, plan: logic.Plan, extra: dict[str, tuple[str, str, str]],
             version_count: int) -> Outcome:
    if plan.missing:
        message = plan.describe_missing()
        # The next drift pass looks for the version again.
        return progressing(Reason.VERSION_NOT_FOUND, message, awaited=True,
                           extra={**extra, VERSION_NOT_FOUND: ("True", VERSION_NOT_FOUND, message)})
    if PROMOTION_BLOCKED in extra:
        # The next drift pass evaluates the rule again: a tag added in MLflow unblocks it.
        return progressing(Reason.PROMOTION_BLOCKED, extra[PROMOTION_BLOCKED][2], awaited=True, extra=extra)
    if DRIFTED in extra:
        return ready(Reason.DRIFT_DETECTED,
                     f"registered model {desired.name!r} observed; drift left in place (driftPolicy Observe)",
                     extra=extra)
    return ready(Reason.RECONCILED, f"registered model {desired.name!r} is in sync ({version_count} versions)")


async def _apply(services: Services, target: TrackingTarget, desired: logic.DesiredModel, plan: logic.Plan,
                 actor: promotion.Actor, event: EventSink, audited: list[dict[str, Any]]) -> None:
    for change in plan.changes:
        try:
            await _apply_change(services.mlflow, target, desired, change)
            await promotions.audit(services.mlflow, target, desired.name, change, actor, event, audited)
        except InvalidRequest as error:
            raise ReconcileProblem(stalled(Reason.INVALID_SPEC, f"MLflow rejected {change.describe()}: {error}")) from None


async def _apply_change(mlflow: MlflowApi, target: TrackingTarget, desired: logic.DesiredModel,
                        change: logic.Change) -> None:
    """One registry write per action; an action without a case here fails type checking."""
    name = desired.name
    match change.action:
        case "set_description":
            await mlflow.update_registered_model_description(target, name, change.value)
        case "set_tag":
            await mlflow.set_registered_model_tag(target, name, change.key, change.value)
        case "delete_tag":
            await mlflow.delete_registered_model_tag(target, name, change.key)
        case "set_alias":
            await mlflow.set_alias(target, name, change.key, change.value)
        case "delete_alias":
            await mlflow.delete_alias(target, name, change.key)
        case "transition":
            await mlflow.transition_stage(target, name, change.version, change.value, desired.archive_existing)
        case "set_version_description":
            await mlflow.update_model_version_description(target, name, change.version, change.value)
        case "set_version_tag":
            await mlflow.set_model_version_tag(target, name, change.version, change.key, change.value)
        case "delete_version_tag":
            await mlflow.delete_model_version_tag(target, name, change.version, change.key)
        case unknown:
            assert_never(unknown)


async def delete_registered_model(ctx: Context[RegisteredModelSpec, RegisteredModelStatus]) -> None:
    """deletionPolicy Delete removes the registered model and every version (a hard delete)."""
    services, identity, spec = ctx.services, ctx.identity, ctx.spec
    if spec.deletion_policy != "Delete":
        return
    name = logic.desired_model(spec, identity).name
    target = await resolve_target(services, identity.namespace, spec.tracking, cleanup=True)
    model = verified_model(services, target, await services.mlflow.get_registered_model(target, name))
    if model is None:
        return
    if not ownership.may_delete(model.tags, identity):
        ctx.event("Warning", "DeleteSkipped", f"registered model {name!r} is not owned by this object "
                  f"(owner: {ownership.describe_owner(model.tags)}); left in place")
        return
    await services.mlflow.delete_registered_model(target, name)
    ctx.event("Normal", "Deleted", f"deleted registered model {name!r} and all its versions from MLflow")
