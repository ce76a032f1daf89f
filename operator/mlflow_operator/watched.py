"""What the operator's watches have seen, so that a reconcile does not read again what a
watch event just delivered.

kopf fills its indices from the watch streams and starts no handler before every index is
filled, so an object missing from an index does not exist (or was created a moment ago:
its own watch event then triggers what depends on it). Without indices (unit tests of the
reconcile paths), every lookup is a read through the gateway.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Iterable, Mapping

from mlflow_operator.api.common import TAG_NAMESPACE
from mlflow_operator.api.experiment import PLURAL as EXPERIMENTS
from mlflow_operator.cluster import JobSnapshot
from mlflow_operator.gateways.kubernetes import KubernetesGateway
from mlflow_operator.gateways.mlflow import MlflowGateway, filter_literal
from mlflow_operator.tracking import ExperimentInfo, TrackingTarget

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
            return await kube.get_object(EXPERIMENTS, namespace, name)
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


class ExperimentPages:
    """The experiments of one namespace on one server, as one paged search found them, kept
    for part of the drift interval: each Experiment's drift check compares against them, so
    the MLflow calls per interval grow with pages, not with objects."""

    def __init__(self, max_age_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age, self._clock = max_age_seconds, clock
        self._pages: dict[tuple[TrackingTarget, str], tuple[float, dict[str, ExperimentInfo]]] = {}
        self._locks: dict[tuple[TrackingTarget, str], asyncio.Lock] = {}

    async def experiments(self, mlflow: MlflowGateway, target: TrackingTarget,
                          namespace: str) -> dict[str, ExperimentInfo]:
        """By id: the experiments tagged with `namespace` (raises what MLflow raises)."""
        key = (target, namespace)
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._pages.get(key)
            if cached is not None and self._clock() - cached[0] < self._max_age:
                return cached[1]
            found: dict[str, ExperimentInfo] = {}
            literal = filter_literal(namespace)
            token: str | None = None
            while True:
                page, token = await mlflow.search_experiments_page(target, f"tags.`{TAG_NAMESPACE}` = {literal}",
                                                                   token)
                found.update((e.experiment_id, e) for e in page)
                if token is None:
                    break
            self._pages[key] = (self._clock(), found)
            return found
