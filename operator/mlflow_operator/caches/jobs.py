"""Which state of each TrainingRun's Job a reconcile last acted on."""

from __future__ import annotations

from typing import Any

from mlflow_operator.cluster.snapshots import JobSnapshot


class HandledJobs:
    """The last state of each TrainingRun's Job that a reconcile acted on: the Job controller
    updates a Job's status many times per run, and only a change of what the operator
    records (pending, running, ended, being deleted) needs a reconcile."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Any, ...]] = {}

    @staticmethod
    def signature(job: JobSnapshot, phase: str) -> tuple[Any, ...]:
        """What a reconcile records from a Job: its phase, whether it is held or going, and
        for a Job of several pods (a distributed run) its pods' counts (status.nodes)."""
        counts = (job.active, job.ready, job.succeeded, job.failed, job.failed_indexes) if job.completions > 1 else ()
        return job.uid, phase, job.deleting, job.finalizers, job.suspended, counts

    def handled(self, owner_uid: str, signature: tuple[Any, ...]) -> bool:
        return self._seen.get(owner_uid) == signature

    def record(self, owner_uid: str, signature: tuple[Any, ...]) -> None:
        self._seen[owner_uid] = signature

    def forget(self, owner_uid: str) -> None:
        self._seen.pop(owner_uid, None)
