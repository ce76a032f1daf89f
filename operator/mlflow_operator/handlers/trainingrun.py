"""kopf wiring for TrainingRun: its own events, its Job's events (a watch, not a polling
loop), a timer that refreshes live metrics, and deletion."""

from __future__ import annotations

from typing import Any

import kopf

from mlflow_operator.api.common import API_VERSION, GROUP, VERSION
from mlflow_operator.api.experiment import PLURAL as EXPERIMENTS
from mlflow_operator.api.trainingrun import KIND, LABEL_TRAINING_RUN, PLURAL
from mlflow_operator.config import OperatorConfig
from mlflow_operator.handlers.common import (
    DELETE_TIMEOUT_SECONDS,
    Kind,
    delete_and_report,
    drift_check_due,
    reconcile_and_report,
    services_of,
)
from mlflow_operator.logic.conditions import ReconcileProblem
from mlflow_operator.logic.trainingrun import JOB_FINALIZER
from mlflow_operator.reconcilers.trainingrun import (
    is_closed,
    kill_training_run,
    parse_spec,
    reconcile_training_run,
)



def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    resource = (GROUP, VERSION, PLURAL)  # positional: kopf's typed selector

    @kopf.on.resume(*resource, id="reconcile", registry=registry)
    @kopf.on.create(*resource, id="reconcile", registry=registry)
    @kopf.on.update(*resource, id="reconcile", field="spec", registry=registry)
    async def training_run_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int, **_: Any) -> None:
        await _reconcile(body, memo, logger, retry=retry)

    @kopf.timer(*resource, id="refresh", interval=config.drift_interval, initial_delay=config.drift_interval,
                when=not_closed, registry=registry)
    async def training_run_refresh(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        """Live metrics while Running, and another try at whatever is left after the Job's
        last event (closing the run or registering the model after an MLflow outage)."""
        if drift_check_due(body, memo):
            await _reconcile(body, memo, logger, retry=None, refresh_metrics=True)

    @kopf.on.event("batch", "v1", "jobs", id="job", labels={LABEL_TRAINING_RUN: kopf.PRESENT}, registry=registry)
    async def job_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        owner = next((ref for ref in body["metadata"].get("ownerReferences") or []
                      if ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION), None)
        if owner is None:
            return
        if await _release_orphan(body, owner, memo):
            return
        # Enough to find the owner: the reconcile reads it fresh (and skips it if it is gone,
        # replaced, or being deleted).
        owner_ref = {"metadata": {"namespace": body["metadata"]["namespace"], "name": owner["name"],
                                  "uid": owner["uid"]}}
        await _reconcile(owner_ref, memo, logger, retry=None)

    @kopf.on.delete(*resource, id="delete", timeout=DELETE_TIMEOUT_SECONDS, registry=registry)
    async def training_run_deleted(body: kopf.Body, memo: kopf.Memo, logger: Any, retry: int, **_: Any) -> None:
        await delete_and_report(plural=PLURAL, body=body, memo=memo, logger=logger, retry=retry,
                                delete=kill_training_run, what="closing the run")

    kopf.index(*resource, id="waiting_for_experiment", registry=registry)(waiting_for_experiment)
    kopf.on.event(GROUP, VERSION, EXPERIMENTS, id="wake_training_runs", when=experiment_ready,
                  registry=registry)(experiment_became_ready)


def waiting_for_experiment(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, str]] | None:
    """TrainingRuns not started yet, by the Experiment they name: woken when it is Ready."""
    name = ((body.get("spec") or {}).get("experimentRef") or {}).get("name")
    if not name or (body.get("status") or {}).get("runId"):
        return None
    metadata = body["metadata"]
    return {(metadata["namespace"], name): {"name": metadata["name"], "uid": metadata["uid"]}}


async def experiment_became_ready(*, body: kopf.Body, memo: Any, logger: Any, **kwargs: Any) -> None:
    """A run applied together with its Experiment waits without retries or errors: the
    Experiment's Ready status is what starts it."""
    index: kopf.Index = kwargs["waiting_for_experiment"]  # kopf passes indices by their id
    namespace = body["metadata"]["namespace"]
    for waiting in list(index.get((namespace, body["metadata"]["name"]), [])):
        await _reconcile({"metadata": {"namespace": namespace, **waiting}}, memo, logger, retry=None)


async def _release_orphan(job: Any, owner: dict[str, Any], memo: kopf.Memo) -> bool:
    """A Job that ended while its TrainingRun is gone has no outcome to record: let it go.
    (While the TrainingRun is being deleted, its delete handler lets the Job go.)"""
    metadata = job["metadata"]
    if JOB_FINALIZER not in (metadata.get("finalizers") or []):
        return False
    finished = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                   for c in (job.get("status") or {}).get("conditions") or [])
    if not (finished or metadata.get("deletionTimestamp")):
        return False
    kube = services_of(memo).kube
    training_run = await kube.get_object(PLURAL, metadata["namespace"], owner["name"])
    if training_run is not None and training_run["metadata"]["uid"] == owner["uid"]:
        return False
    await kube.remove_job_finalizer(metadata["namespace"], metadata["name"], JOB_FINALIZER)
    return True


def experiment_ready(body: kopf.Body, **_: Any) -> bool:
    status = body.get("status") or {}
    return bool(status.get("experimentId")) and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def not_closed(body: kopf.Body, **_: Any) -> bool:
    try:
        return not is_closed(parse_spec(body.get("spec")), dict(body.get("status") or {}))
    except ReconcileProblem:
        return False  # an invalid spec waits for a change, not for the timer


def _pending_until_started(status: dict[str, Any]) -> dict[str, Any]:
    """A run that failed before it started is still Pending, with the reason in the conditions."""
    return {} if status.get("phase") else {"phase": "Pending"}


TRAINING_RUN = Kind(KIND, PLURAL, parse_spec, reconcile_training_run, status_on_error=_pending_until_started)


async def _reconcile(body: Any, memo: kopf.Memo, logger: Any, retry: int | None,
                     refresh_metrics: bool = False) -> None:
    await reconcile_and_report(TRAINING_RUN, body=body, memo=memo, logger=logger, retry=retry,
                               drift_check=refresh_metrics)
