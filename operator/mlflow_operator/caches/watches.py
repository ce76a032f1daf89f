"""What the operator's watches have seen, so that a reconcile does not read again what a
watch event just delivered.

The caches are filled by kopf event handlers as the watches' events arrive. They never hold
up the operator's start (kopf's own indices do: no handler runs before every index is
filled, and that bookkeeping costs more than linear time in the number of objects), so a
key a cache does not hold is unknown, not absent: a lookup that needs to know reads through
the gateway. Without caches (unit tests of the reconcile paths), every lookup is a read.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Generic, TypeVar

from mlflow_operator.api.experiment import PLURAL as EXPERIMENTS
from mlflow_operator.api.registeredmodel import PLURAL as REGISTERED_MODELS
from mlflow_operator.cluster.snapshots import JobSnapshot
from mlflow_operator.gateways.kubernetes import CredentialsSecret
from mlflow_operator.gateways.protocols import KubernetesApi

# Cache keys of namespaced objects: (namespace, name).
Key = tuple[str, str]
K = TypeVar("K")
T = TypeVar("T")


# Seconds a labelled Secret's credentials, as the watch saw them, are used without a read.
CREDENTIALS_MAX_AGE = 300.0
# Strings up to this long are shared between the cached copies (keys, reasons, namespaces, URIs).
SHARED_STRING_CHARS = 64


def shared_copy(value: Any) -> Any:
    """A deep copy of JSON whose keys and short strings are interned: thousands of copies hold
    one copy of "lastTransitionTime", "Ready" or their namespace instead of one each (each
    watch event is parsed anew), half the memory of a plain deep copy."""
    if isinstance(value, dict):
        return {sys.intern(key) if isinstance(key, str) else key: shared_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shared_copy(item) for item in value]
    if type(value) is str and len(value) <= SHARED_STRING_CHARS:
        return sys.intern(value)
    return value


class WatchCache(Generic[K, T]):
    """The last value a watch event gave for each key; a deleted object's key is dropped."""

    def __init__(self) -> None:
        self._values: dict[K, T] = {}

    def get(self, key: K) -> T | None:
        return self._values.get(key)

    def put(self, key: K, value: T | None) -> None:
        """Record what the latest event says; None: the object is gone (or no longer matches)."""
        if value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = value

    def values(self) -> list[T]:
        """A snapshot of every value (safe to iterate while events keep arriving)."""
        return list(self._values.values())

    def __len__(self) -> int:
        return len(self._values)


class NamespacedWatchCache(WatchCache[Key, T]):
    """A watch cache of namespaced objects that also lists one namespace's objects without
    going through every other namespace's."""

    def __init__(self) -> None:
        super().__init__()
        self._by_namespace: dict[str, dict[str, T]] = {}

    def put(self, key: Key, value: T | None) -> None:
        super().put(key, value)
        namespace, name = key
        if value is not None:
            self._by_namespace.setdefault(namespace, {})[name] = value
        elif namespace in self._by_namespace:
            objects = self._by_namespace[namespace]
            objects.pop(name, None)
            if not objects:
                del self._by_namespace[namespace]

    def values_in(self, namespace: str) -> list[T]:
        return list(self._by_namespace.get(namespace, {}).values())


class Waiting:
    """Objects waiting for another one, by the key of what they wait for (TrainingRuns for the
    Experiment they name): an object waits for one thing at a time."""

    def __init__(self) -> None:
        self._by_target: dict[Key, dict[str, str]] = {}  # target -> {uid: name}
        self._target_of: dict[str, Key] = {}

    def put(self, uid: str, name: str, target: Key | None) -> None:
        """Record what `uid` waits for now (None: nothing)."""
        before = self._target_of.pop(uid, None)
        if before is not None:
            waiting = self._by_target.get(before, {})
            waiting.pop(uid, None)
            if not waiting:
                self._by_target.pop(before, None)
        if target is not None:
            self._target_of[uid] = target
            self._by_target.setdefault(target, {})[uid] = name

    def waiting_for(self, target: Key) -> list[tuple[str, str]]:
        """(name, uid) of each object waiting for `target`."""
        return [(name, uid) for uid, name in self._by_target.get(target, {}).items()]

    def __len__(self) -> int:
        return len(self._target_of)


class Watched:
    def __init__(self, jobs: WatchCache[Key, JobSnapshot] | None = None,
                 experiments: WatchCache[Key, dict[str, Any]] | None = None,
                 credentials: WatchCache[Key, dict[str, str]] | None = None,
                 registered_models: NamespacedWatchCache[dict[str, Any]] | None = None) -> None:
        self.jobs, self.experiments, self.credentials = jobs, experiments, credentials
        # Experiments and RegisteredModels as their watch last saw them (synced_view): what the
        # drift pass goes through, and what a TrainingRun needs of its Experiment.
        self.registered_models = registered_models
        # TrainingRuns by uid: whether they are closed (a Job's events need no read to know),
        # and the open ones as last seen (by their watch, or as a status write left them): a
        # Job's event reconciles its run from there instead of reading it.
        self.training_runs_closed: WatchCache[Key, bool] = WatchCache()  # by (namespace, uid)
        self.open_training_runs: WatchCache[str, dict[str, Any]] = WatchCache()
        # TrainingRuns and TrainingSweeps not started yet, by the Experiment they name (woken
        # when it is Ready).
        self.waiting_for_experiment = Waiting()
        self._credentials_seen_at: dict[Key, float] = {}
        self.sweeps_waiting_for_experiment = Waiting()

    @classmethod
    def filled_by_watches(cls, credentials: bool = True) -> Watched:
        """Caches for the operator's watch event handlers (credentials: if Secrets are watched)."""
        return cls(jobs=WatchCache(), experiments=WatchCache(), credentials=WatchCache() if credentials else None,
                   registered_models=NamespacedWatchCache())

    def synced(self, plural: str) -> WatchCache[Key, dict[str, Any]] | None:
        """The watch cache of a kind kept in sync with MLflow (None: no watches, unit tests)."""
        return {EXPERIMENTS: self.experiments, REGISTERED_MODELS: self.registered_models}.get(plural)

    async def job(self, kube: KubernetesApi, namespace: str, name: str) -> JobSnapshot | None:
        """A training Job as last seen; None: the watch has not seen it. A TrainingRun that
        has recorded its Job's uid reads a Job the watch has not seen (trainingrun.py), and
        creating a Job that exists is a conflict that reads it, so a Job is never taken for
        lost or made twice on a watch's delay."""
        if self.jobs is None:
            return await kube.get_job(namespace, name)
        return self.jobs.get((namespace, name))

    async def experiment(self, kube: KubernetesApi, namespace: str, name: str) -> dict[str, Any] | None:
        """An Experiment object as last seen (its synced_view), or read (None: no such object)."""
        seen = self.experiments.get((namespace, name)) if self.experiments is not None else None
        if seen is not None:
            return seen
        return await kube.get_object(EXPERIMENTS, namespace, name)

    def saw_credentials(self, key: Key, data: dict[str, str] | None, now: float | None = None) -> None:
        """What a watch event says of a labelled Secret (None: deleted, or no longer labelled)."""
        assert self.credentials is not None
        self.credentials.put(key, data)
        if data is None:
            self._credentials_seen_at.pop(key, None)
        else:
            self._credentials_seen_at[key] = time.monotonic() if now is None else now

    async def credentials_secret(self, kube: KubernetesApi, namespace: str, name: str) -> CredentialsSecret | None:
        """A credentials Secret (None: no such Secret). The watch holds only the Secrets labelled
        for the operator; one it has not seen (missing, not labelled, or created a moment ago)
        is read, so that the object can say which. What the watch saw is trusted for
        CREDENTIALS_MAX_AGE seconds, then read again: a Secret unlabelled while the watch was
        re-listing brings no event, and its owner's consent must not outlive that by long."""
        key = (namespace, name)
        if self.credentials is not None:
            data = self.credentials.get(key)
            fresh = time.monotonic() - self._credentials_seen_at.get(key, 0.0) < CREDENTIALS_MAX_AGE
            if data is not None and fresh:
                return CredentialsSecret(name=name, opted_in=True, data=data)
            if data is not None:
                secret = await kube.read_credentials_secret(namespace, name)
                self.saw_credentials(key, secret.data if secret is not None and secret.opted_in else None)
                return secret
        return await kube.read_credentials_secret(namespace, name)
