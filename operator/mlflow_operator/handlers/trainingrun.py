"""kopf wiring for TrainingRun: its own events, its Job's events (a watch, not a polling
loop), a timer that refreshes live metrics, and deletion."""

from __future__ import annotations

from typing import Any

import kopf

from mlflow_operator.api.common import API_VERSION, GROUP, VERSION
from mlflow_operator.api.trainingrun import KIND, LABEL_TRAINING_RUN, PLURAL, TrainingRunStatus
from mlflow_operator.caches.watches import shared_copy
from mlflow_operator.cluster.snapshots import JobSnapshot
from mlflow_operator.gateways.kubernetes import job_snapshot
from mlflow_operator.gateways.protocols import KubernetesApi
from mlflow_operator.handlers.common import Kind, pending_until_started, reconcile_and_report, stalled_for
from mlflow_operator.handlers.lifecycle import register_lifecycle_kind
from mlflow_operator.handlers.objects import services_of
from mlflow_operator.handlers.waiting import waiting_for_experiment, wake_waiting
from mlflow_operator.logic import trainingrun as logic
from mlflow_operator.logic.reasons import Reason
from mlflow_operator.logic.trainingrun import JOB_FINALIZER
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.reconcilers.trainingrun import (
    kill_training_run,
    parse_spec,
    reconcile_training_run,
)
from mlflow_operator.runtime.config import OperatorConfig


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    resource = (GROUP, VERSION, PLURAL)  # positional: kopf's typed selector

    # Changes, the refresh timer while open (live metrics; what is left after the Job's last
    # event, e.g. closing the run or registering the model after an MLflow outage), deletion.
    register_lifecycle_kind(registry, config, TRAINING_RUN, is_open=needs_refresh)

    # Training Jobs only, selected by the API server (settings.watching.label_selectors).
    @kopf.on.event("batch", "v1", "jobs", id="job", labels={LABEL_TRAINING_RUN: kopf.PRESENT}, registry=registry)
    async def job_changed(body: kopf.Body, memo: kopf.Memo, logger: Any, type: str | None = None,
                          **_: Any) -> None:
        job = job_snapshot(body)
        services = services_of(memo)
        assert services.caches.watched.jobs is not None
        services.caches.watched.jobs.put((job.namespace, job.name), None if type == "DELETED" else job)
        # Its controller, in its own namespace: the only TrainingRun a Job's events concern.
        owner = next((ref for ref in body["metadata"].get("ownerReferences") or []
                      if ref.get("kind") == KIND and ref.get("apiVersion") == API_VERSION
                      and ref.get("controller") is True), None)
        if owner is None:
            return
        # The run as last seen if it is open; else, and when its Job is going (as when the
        # run is deleted), enough to find it: the reconcile reads it fresh (and skips it if
        # it is gone, replaced, or being deleted).
        seen = None if job.deleting or type == "DELETED" else services.caches.watched.open_training_runs.get(owner["uid"])
        if seen is not None and seen["metadata"]["namespace"] != job.namespace:
            seen = None
        run: Any = seen or {"metadata": {"namespace": job.namespace, "name": owner["name"], "uid": owner["uid"]}}
        closed = services.caches.watched.training_runs_closed.get((job.namespace, owner["uid"]))
        if closed is None:  # not seen (yet): read it, and reconcile from that read
            run = await _owner_if_alive(services.kube, job.namespace, owner)
            if run is None:  # its TrainingRun is gone
                await _release_orphan(job, memo)
                return
            closed = not needs_job_events(run)
        handled = services.caches.handled_jobs
        signature = handled.signature(job, logic.phase_of(job))
        gone = type == "DELETED"  # always news for an open run (a stopped trial waits for it)
        if (handled.handled(owner["uid"], signature) and not (gone and not closed)) or (closed and not job.deleting):
            return  # nothing the operator records changed; a closed run's Job is done
        await _reconcile(run, memo, logger, retry=None)

    @kopf.on.event(*resource, id="watch", registry=registry)
    async def training_run_seen(body: kopf.Body, memo: kopf.Memo, type: str | None = None, **_: Any) -> None:
        """What a Job's events and an Experiment's Ready status need to know of each run."""
        watched, metadata = services_of(memo).caches.watched, body["metadata"]
        gone = type == "DELETED"
        watched.training_runs_closed.put((metadata["namespace"], metadata["uid"]),
                                         None if gone else not needs_job_events(body))
        watched.open_training_runs.put(metadata["uid"], None if gone else open_run_copy(body))
        watched.waiting_for_experiment.put(metadata["uid"], metadata["name"],
                                           None if gone else run_waiting_for_experiment(body))


async def wake_training_runs(experiment: kopf.Body, memo: kopf.Memo, logger: Any) -> None:
    """A run applied together with its Experiment waits without retries or errors: the
    Experiment's Ready status is what starts it."""
    await wake_waiting(TRAINING_RUN, services_of(memo).caches.watched.waiting_for_experiment, experiment, memo, logger)


async def _owner_if_alive(kube: KubernetesApi, namespace: str, owner: dict[str, Any]) -> dict[str, Any] | None:
    """A Job's TrainingRun, read (None: it is gone or was replaced)."""
    run = await kube.get_object(PLURAL, namespace, owner["name"])
    return run if run is not None and run["metadata"]["uid"] == owner["uid"] else None


async def _release_orphan(job: JobSnapshot, memo: kopf.Memo) -> None:
    """A Job that ended while its TrainingRun is gone has no outcome to record: let it go.
    (While the TrainingRun is being deleted, its delete handler lets the Job go; a running
    Job is deleted by the garbage collector, and comes back here being deleted.)"""
    if JOB_FINALIZER in job.finalizers and job.ended:
        await services_of(memo).kube.remove_job_finalizer(job.namespace, job.name, JOB_FINALIZER)


def open_run_copy(body: Any) -> dict[str, Any] | None:
    """A copy of the run if it is open (a closed run's Job events need no reconcile),
    without its managedFields."""
    if not needs_job_events(body):
        return None
    metadata = {key: value for key, value in body["metadata"].items() if key != "managedFields"}
    return shared_copy({**body, "metadata": metadata})


def _written(services: Services, run: dict[str, Any]) -> None:
    """A status write's reply is the run as it is now: fresher than the watch, for a while."""
    services.caches.watched.open_training_runs.put(run["metadata"]["uid"], open_run_copy(run))


def run_waiting_for_experiment(body: Any) -> tuple[str, str] | None:
    """The Experiment a TrainingRun not started yet waits for (its Ready status starts it)."""
    return waiting_for_experiment(body, started=bool(TrainingRunStatus.of(body).run_id))


def needs_job_events(body: Any) -> bool:
    """Not closed yet. Called on every event of every TrainingRun: the status and one field of
    the spec, not the whole spec (a spec the operator cannot use is never closed)."""
    registers_model = (body.get("spec") or {}).get("registerModel") is not None
    return not logic.is_closed(TrainingRunStatus.of(body), registers_model)


# Stalled for these, a run waits for its spec to change (the update handler), or for the
# operator's configuration (a restart resumes every object): no timer.
WAITS_FOR_SPEC = (Reason.INVALID_SPEC, Reason.INVALID_TEMPLATE, Reason.TRACKING_SERVER_NOT_ALLOWED,
                  Reason.EARLY_STOPPED)


def needs_refresh(body: Any, **_: Any) -> bool:
    """Open runs are refreshed (live metrics, what is left after an outage, a model logged
    late); closed ones and those only a new spec can fix are not polled."""
    return needs_job_events(body) and not stalled_for(TrainingRunStatus.of(body), WAITS_FOR_SPEC)


TRAINING_RUN = Kind(KIND, PLURAL, parse_spec, TrainingRunStatus, reconcile_training_run, kill_training_run, "closing the run",
                    status_on_error=pending_until_started, written=_written)


async def _reconcile(body: Any, memo: Any, logger: Any, retry: int | None,
                     refresh_metrics: bool = False) -> None:
    await reconcile_and_report(TRAINING_RUN, body=body, memo=memo, logger=logger, retry=retry,
                               drift_check=refresh_metrics)
