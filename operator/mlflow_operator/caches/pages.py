"""MLflow searches shared by the drift checks of one pass: the experiments and registered
models of a namespace, read by pages once per part of the drift interval."""

from __future__ import annotations

import asyncio
import functools
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Generic, Iterable, TypeVar

from mlflow_operator.api.common import TAG_NAMESPACE
from mlflow_operator.gateways.mlflow import every_page, filter_literal
from mlflow_operator.gateways.protocols import MlflowApi
from mlflow_operator.tracking.entities import (
    ExperimentInfo,
    ModelVersionInfo,
    RegisteredModelInfo,
    TrackingTarget,
)

K = TypeVar("K")
T = TypeVar("T")


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

    async def experiments(self, mlflow: MlflowApi, target: TrackingTarget,
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

    async def models(self, mlflow: MlflowApi, target: TrackingTarget, namespace: str,
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

    async def _refresh(self, mlflow: MlflowApi, target: TrackingTarget, known: _KnownRegistry,
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

    async def _read_in_full(self, mlflow: MlflowApi, target: TrackingTarget, known: _KnownRegistry,
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


async def _updated_since(mlflow: MlflowApi, target: TrackingTarget, names_filter: str,
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
