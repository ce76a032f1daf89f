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
    Kind,
    pending_until_started,
    reconcile_and_report,
    register_lifecycle_kind,
    services_of,
    stalled_for,
)
from mlflow_operator.cluster import JobSnapshot
from mlflow_operator.gateways.kubernetes import job_snapshot
from mlflow_operator.logic import trainingrun as logic
from mlflow_operator.logic.trainingrun import JOB_FINALIZER
from mlflow_operator.reconcilers.trainingrun import (
    kill_training_run,
    parse_spec,
    reconcile_training_run,
)



def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    resource = (GROUP, VERSION, PLURAL)  # positional: kopf's typed selector

    # Changes, the refresh timer while open (live metrics; what is left after the Job's last
    # event, e.g. closing the run or registering the model after an MLflow outage), deletion.
    register_lifecycle_kind(registry, config, TRAINING_RUN, is_open=needs_refresh, delete=kill_training_run,
                            what="closing the run")

    # Training Jobs only, selected by the API server (settings.watching.label_selectors).
    @kopf.on.event("batch", "v1", "jobs", id="job", labels={LABEL_TRAINING_RUN: kopf.PRESENT}, registry=registry)
    async def job_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, **kwargs: Any) -> None:
        owner = next((ref for ref in body["metadata"].get("ownerReferences") or []
                      if ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION), None)
        if owner is None:
            return
        job = job_snapshot(body)
        closed: kopf.Index = kwargs["training_runs_closed"]
        known = closed.get(owner["uid"])
        if known is None:  # its TrainingRun is gone
            await _release_orphan(job, memo)
            return
        handled = services_of(memo).handled_jobs
        signature = handled.signature(job, logic.phase_of(job))
        if handled.handled(owner["uid"], signature) or ("closed" in known and not job.deleting):
            return  # nothing the operator records changed; a closed run's Job is done
        # Enough to find the owner: the reconcile reads it fresh (and skips it if it is gone,
        # replaced, or being deleted).
        owner_ref = {"metadata": {"namespace": body["metadata"]["namespace"], "name": owner["name"],
                                  "uid": owner["uid"]}}
        await _reconcile(owner_ref, memo, logger, retry=None)

    kopf.index(*resource, id="waiting_for_experiment", registry=registry)(waiting_for_experiment)
    kopf.index(*resource, id="training_runs_closed", registry=registry)(training_run_closed)
    kopf.index("batch", "v1", "jobs", id="training_jobs", labels={LABEL_TRAINING_RUN: kopf.PRESENT},
               registry=registry)(training_job)
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


async def _release_orphan(job: JobSnapshot, memo: kopf.Memo) -> None:
    """A Job that ended while its TrainingRun is gone has no outcome to record: let it go.
    (While the TrainingRun is being deleted, its delete handler lets the Job go; a running
    Job is deleted by the garbage collector, and comes back here being deleted.)"""
    if JOB_FINALIZER in job.finalizers and job.ended:
        await services_of(memo).kube.remove_job_finalizer(job.namespace, job.name, JOB_FINALIZER)


def training_run_closed(body: kopf.Body, **_: Any) -> dict[str, str]:
    """Every TrainingRun by uid: whether it is closed. A Job's events need no read to know
    whether its TrainingRun still exists or has anything left to do."""
    return {body["metadata"]["uid"]: "open" if needs_job_events(body) else "closed"}


def training_job(body: kopf.Body, **_: Any) -> dict[tuple[str, str], JobSnapshot]:
    """Training Jobs as the watch last saw them (services.watched): reconciles read no Job."""
    job = job_snapshot(body)
    return {(job.namespace, job.name): job}


def experiment_ready(body: kopf.Body, **_: Any) -> bool:
    status = body.get("status") or {}
    return bool(status.get("experimentId")) and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def needs_job_events(body: Any) -> bool:
    """Not closed yet. Called on every event of every TrainingRun: reads two fields, parses
    nothing (a spec the operator cannot use is never closed)."""
    registers_model = (body.get("spec") or {}).get("registerModel") is not None
    return not logic.is_closed(body.get("status") or {}, registers_model)


# Stalled for these, a run waits for its spec to change (the update handler), or for the
# operator's configuration (a restart resumes every object): no timer.
WAITS_FOR_SPEC = ("InvalidSpec", "InvalidTemplate", "TrackingServerNotAllowed")


def needs_refresh(body: kopf.Body, **_: Any) -> bool:
    """Open runs are refreshed (live metrics, what is left after an outage, a model logged
    late); closed ones and those only a new spec can fix are not polled."""
    status = body.get("status") or {}
    return needs_job_events(body) and not stalled_for(status, WAITS_FOR_SPEC)


TRAINING_RUN = Kind(KIND, PLURAL, parse_spec, reconcile_training_run, status_on_error=pending_until_started)


async def _reconcile(body: Any, memo: kopf.Memo, logger: Any, retry: int | None,
                     refresh_metrics: bool = False) -> None:
    await reconcile_and_report(TRAINING_RUN, body=body, memo=memo, logger=logger, retry=retry,
                               drift_check=refresh_metrics)
