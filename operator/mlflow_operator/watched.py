"""What the operator's watches have seen, so that a reconcile does not read again what a
watch event just delivered.

kopf fills its indices from the watch streams and starts no handler before every index is
filled, so an object missing from an index does not exist (or was created a moment ago:
its own watch event then triggers what depends on it). Without indices (unit tests of the
reconcile paths), every lookup is a read through the gateway.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from mlflow_operator.cluster import JobSnapshot
from mlflow_operator.gateways.kubernetes import KubernetesGateway

# Index keys: (namespace, name).
Key = tuple[str, str]


def _only(store: Iterable[Any] | None) -> Any:
    return next(iter(store), None) if store is not None else None


class Watched:
    def __init__(self, jobs: Mapping[Key, Iterable[JobSnapshot]] | None = None,
                 experiments: Mapping[Key, Iterable[dict[str, Any]]] | None = None) -> None:
        self._jobs, self._experiments = jobs, experiments

    async def job(self, kube: KubernetesGateway, namespace: str, name: str) -> JobSnapshot | None:
        """A training Job as last seen (None: no such Job)."""
        if self._jobs is None:
            return await kube.get_job(namespace, name)
        return _only(self._jobs.get((namespace, name)))

    async def experiment(self, kube: KubernetesGateway, namespace: str, name: str) -> dict[str, Any] | None:
        """An Experiment object's spec.tracking and status as last seen (None: no such object)."""
        if self._experiments is None:
            return await kube.get_object("experiments", namespace, name)
        return _only(self._experiments.get((namespace, name)))


class HandledJobs:
    """The last state of each TrainingRun's Job that a reconcile acted on: the Job controller
    updates a Job's status many times per run, and only a change of what the operator
    records (pending, running, ended, being deleted) needs a reconcile."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[Any, ...]] = {}

    @staticmethod
    def signature(job: JobSnapshot, phase: str) -> tuple[Any, ...]:
        return job.uid, phase, job.deleting, job.finalizers

    def handled(self, owner_uid: str, signature: tuple[Any, ...]) -> bool:
        return self._seen.get(owner_uid) == signature

    def record(self, owner_uid: str, signature: tuple[Any, ...]) -> None:
        self._seen[owner_uid] = signature

    def forget(self, owner_uid: str) -> None:
        self._seen.pop(owner_uid, None)
