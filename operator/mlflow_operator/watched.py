"""What the operator's watches have seen, so that a reconcile does not read again what a
watch event just delivered.

The caches are filled by kopf event handlers as the watches' events arrive. They never hold
up the operator's start (kopf's own indices do: no handler runs before every index is
filled, and that bookkeeping costs more than linear time in the number of objects), so a
key a cache does not hold is unknown, not absent: a lookup that needs to know reads through
the gateway. Without caches (unit tests of the reconcile paths), every lookup is a read.
"""

from __future__ import annotations

import asyncio
import functools
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Iterable, TypeVar

from mlflow_operator.api.common import TAG_NAMESPACE
from mlflow_operator.api.experiment import PLURAL as EXPERIMENTS
from mlflow_operator.api.registeredmodel import PLURAL as REGISTERED_MODELS
from mlflow_operator.cluster import JobSnapshot
from mlflow_operator.gateways.kubernetes import CredentialsSecret, KubernetesGateway
from mlflow_operator.gateways.mlflow import MlflowGateway, every_page, filter_literal
from mlflow_operator.tracking import ExperimentInfo, ModelVersionInfo, RegisteredModelInfo, TrackingTarget

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

    async def job(self, kube: KubernetesGateway, namespace: str, name: str) -> JobSnapshot | None:
        """A training Job as last seen; None: the watch has not seen it. A TrainingRun that
        has recorded its Job's uid reads a Job the watch has not seen (trainingrun.py), and
        creating a Job that exists is a conflict that reads it, so a Job is never taken for
        lost or made twice on a watch's delay."""
        if self.jobs is None:
            return await kube.get_job(namespace, name)
        return self.jobs.get((namespace, name))

    async def experiment(self, kube: KubernetesGateway, namespace: str, name: str) -> dict[str, Any] | None:
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

    async def credentials_secret(self, kube: KubernetesGateway, namespace: str, name: str) -> CredentialsSecret | None:
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


class _SharedPages(Generic[K, T]):
    """What one paged search found, kept for part of the drift interval and shared by every
    drift check that asks for the same key: the MLflow calls per interval grow with pages,
    not with objects."""

    def __init__(self, max_age_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age, self._clock = max_age_seconds, clock
        self._pages: dict[K, tuple[float, T]] = {}
        self._locks: dict[K, asyncio.Lock] = {}

    async def _cached(self, key: K, search: Callable[[], Awaitable[T]]) -> T:
        async with self._locks.setdefault(key, asyncio.Lock()):
            cached = self._pages.get(key)
            if cached is not None and self._clock() - cached[0] < self._max_age:
                return cached[1]
            found = await search()
            self._pages[key] = (self._clock(), found)
            return found


class ExperimentPages(_SharedPages[tuple[TrackingTarget, str], dict[str, ExperimentInfo]]):
    """The experiments of one namespace on one server, as one paged search found them."""

    async def experiments(self, mlflow: MlflowGateway, target: TrackingTarget,
                          namespace: str) -> dict[str, ExperimentInfo]:
        """By id: the experiments tagged with `namespace` (raises what MLflow raises)."""

        async def search() -> dict[str, ExperimentInfo]:
            namespace_filter = _namespace_filter(namespace)
            found = await every_page(lambda token: mlflow.search_experiments_page(target, namespace_filter, token))
            return {e.experiment_id: e for e in found}

        return await self._cached((target, namespace), search)


def _namespace_filter(namespace: str) -> str:
    """MLflow entities tagged with the namespace (a DNS label: always a valid literal)."""
    return f"tags.`{TAG_NAMESPACE}` = {filter_literal(namespace)}"


# A `name IN (...)` filter of at most this many characters goes in one search_model_versions
# call (a GET: the filter is in the URL).
VERSION_FILTER_MAX_CHARS = 8000
# Versions per page of the search for recently updated versions: one page when little changed
# (a version created or moved to another stage moves its model's last_updated, and that model
# is read in full instead: what is left for this search is mostly descriptions).
RECENT_PAGE_SIZE = 10


@dataclass(frozen=True)
class ModelInRegistry:
    model: RegisteredModelInfo
    versions: list[ModelVersionInfo]  # lowest number first


@dataclass
class _KnownVersions:
    """Every version of one model as last read, with the model's last_updated then."""

    stamp: int | None
    versions: dict[str, ModelVersionInfo]
    read_again_at: float


@dataclass
class _KnownRegistry:
    """The versions of one namespace's models on one server, as the drift passes keep them."""

    models: dict[str, _KnownVersions] = field(default_factory=dict)
    # Where this pass's search for updated versions starts (server ms): the newest stamp known
    # when the previous pass started. Every write after that start is stamped at or after it
    # (by the server's clock). The newest stamp read during a pass would not do: a write to a
    # model read early in the pass, stamped before a version read later, would be skipped.
    newest_update: int | None = None
    # The newest stamp of anything read so far (models and versions).
    newest_seen: int | None = None

    def note(self, stamps: Iterable[int | None]) -> None:
        self.newest_seen = max((s for s in (self.newest_seen, *stamps) if s is not None), default=None)


class ModelPages(_SharedPages[tuple[TrackingTarget, str], dict[str, ModelInRegistry]]):
    """The registered models of one namespace on one server and their versions, for drift
    checks, without reading every version on each pass.

    Each pass searches the models (one paged `search_registered_models`: description, tags,
    aliases, last_updated). A model's versions are read in full only when it is new here, its
    last_updated moved (MLflow moves it when a version is created, deleted or changes stage),
    or after `full_read_seconds` (jittered: a net for what timestamps cannot show). For the
    others, one search per `name IN (...)` filter finds the versions updated since the previous
    pass started (newest first, stopping at older ones: descriptions), and one per
    version number reads the versions whose tags RegisteredModels declare or manage (a tag
    change moves no timestamp). What a pass reads grows with what changed, not with every
    version. A write stamped before a pass started but committed after that pass read it is
    caught by the next full read."""

    def __init__(self, max_age_seconds: float, full_read_seconds: float,
                 clock: Callable[[], float] = time.monotonic, jitter: Callable[[], float] = random.random) -> None:
        super().__init__(max_age_seconds, clock)
        self._full_read_seconds, self._jitter = full_read_seconds, jitter
        self._known: dict[tuple[TrackingTarget, str], _KnownRegistry] = {}

    async def models(self, mlflow: MlflowGateway, target: TrackingTarget, namespace: str,
                     tagged: Callable[[], Iterable[tuple[str, str]]] = tuple) -> dict[str, ModelInRegistry]:
        """By name: the registered models tagged with `namespace` (raises what MLflow raises).
        `tagged()`: (model name, version number) of the versions whose tags must be read."""

        async def search() -> dict[str, ModelInRegistry]:
            namespace_filter = _namespace_filter(namespace)
            # A model whose name no filter can express is left out: its check reconciles.
            models = {m.name: m for m in await every_page(
                lambda token: mlflow.search_registered_models_page(target, namespace_filter, token))
                if filter_literal(m.name) is not None}
            known = self._known.setdefault((target, namespace), _KnownRegistry())
            await self._refresh(mlflow, target, known, models, set(tagged()))
            return {name: ModelInRegistry(model, sorted(known.models[name].versions.values(),
                                                         key=lambda v: int(v.version)))
                    for name, model in models.items()}

        return await self._cached((target, namespace), search)

    async def _refresh(self, mlflow: MlflowGateway, target: TrackingTarget, known: _KnownRegistry,
                       models: dict[str, RegisteredModelInfo], tagged: set[tuple[str, str]]) -> None:
        now, since = self._clock(), known.newest_update
        # Stamps known now, this pass's reads apart: the next pass's search starts there.
        known.note(m.last_updated for m in models.values())
        known.newest_update = known.newest_seen
        for gone in set(known.models) - set(models):
            del known.models[gone]
        stale = {name for name, model in models.items() if self._stale(known.models.get(name), model, now)}
        fresh = sorted(set(models) - stale)
        if fresh and since is not None:
            for names_filter in names_in_filters(fresh):
                stale |= self._replace(known, await _updated_since(mlflow, target, names_filter, since))
        by_number: dict[str, list[str]] = {}
        for name, number in tagged:
            if name in models and name not in stale and number.isdigit():
                by_number.setdefault(number, []).append(name)
        for number, names in sorted(by_number.items()):
            for names_filter in names_in_filters(sorted(names)):
                read = await every_page(functools.partial(
                    mlflow.search_model_versions_page, target, f"{names_filter} AND version_number = {number}"))
                stale |= self._replace(known, read)
        await self._read_in_full(mlflow, target, known, {name: models[name] for name in stale}, now)

    def _stale(self, known: _KnownVersions | None, model: RegisteredModelInfo, now: float) -> bool:
        """Whether the model's versions are to be read in full on this pass."""
        return (known is None or model.last_updated is None or known.stamp != model.last_updated
                or now >= known.read_again_at)

    async def _read_in_full(self, mlflow: MlflowGateway, target: TrackingTarget, known: _KnownRegistry,
                            models: dict[str, RegisteredModelInfo], now: float) -> None:
        by_model: dict[str, dict[str, ModelVersionInfo]] = {name: {} for name in models}
        for names_filter in names_in_filters(sorted(models)):
            read = await every_page(functools.partial(mlflow.search_model_versions_page, target, names_filter))
            known.note(v.last_updated for v in read)
            for version in read:
                if version.name in by_model:
                    by_model[version.name][version.version] = version
        for name, versions in by_model.items():
            known.models[name] = _KnownVersions(models[name].last_updated, versions,
                                                read_again_at=now + self._full_read_seconds * (1 + self._jitter()))

    @staticmethod
    def _replace(known: _KnownRegistry, versions: list[ModelVersionInfo]) -> set[str]:
        """Put versions read again in place; the models with a version not known here (to be
        read in full)."""
        known.note(v.last_updated for v in versions)
        unknown = set()
        for version in versions:
            model = known.models.get(version.name)
            if model is None or version.version not in model.versions:
                unknown.add(version.name)
            else:
                model.versions[version.version] = version
        return unknown


async def _updated_since(mlflow: MlflowGateway, target: TrackingTarget, names_filter: str,
                         since: int) -> list[ModelVersionInfo]:
    """The versions matching `names_filter` last updated at `since` (server ms) or later (the
    ones at `since` again: a write in the same millisecond): the newest first, page by page
    until an older one shows."""
    found: list[ModelVersionInfo] = []
    token: str | None = None
    while True:
        page, token = await mlflow.search_model_versions_page(
            target, names_filter, token, order_by="last_updated_timestamp DESC", max_results=RECENT_PAGE_SIZE)
        newer = [v for v in page if v.last_updated is None or v.last_updated >= since]
        found.extend(newer)
        if token is None or len(newer) < len(page):
            return found


def names_in_filters(names: Iterable[str], max_chars: int = VERSION_FILTER_MAX_CHARS) -> list[str]:
    """`name IN (...)` filters that together cover every name a filter can express."""
    filters: list[str] = []
    chunk: list[str] = []
    length = 0
    for name in names:
        literal = filter_literal(name)
        if literal is None:
            continue
        if chunk and length + len(literal) + 2 > max_chars:
            filters.append(f"name IN ({', '.join(chunk)})")
            chunk, length = [], 0
        chunk.append(literal)
        length += len(literal) + 2
    if chunk:
        filters.append(f"name IN ({', '.join(chunk)})")
    return filters
