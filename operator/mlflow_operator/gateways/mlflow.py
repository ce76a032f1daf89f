"""The one place the operator talks to MLflow.

It uses mlflow-skinny's REST stores (the same code `MlflowClient` uses) with per-target
credentials instead of process-wide environment variables, runs each blocking call in a
bounded thread pool so the event loop never waits on the network, times every call for
/metrics, and turns MLflow exceptions into the operator's own error types.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from mlflow.entities import ExperimentTag, Param, RunTag, ViewType
from mlflow.entities.model_registry import ModelVersionTag, RegisteredModelTag
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.rest_store import RestStore as RegistryRestStore
from mlflow.store.tracking.rest_store import RestStore as TrackingRestStore
from mlflow.utils.rest_utils import MlflowHostCreds

from mlflow_operator.metrics import MLFLOW_REQUESTS
from mlflow_operator.tracking import (
    AlreadyExists,
    ExperimentInfo,
    InvalidRequest,
    LoggedModelInfo,
    ModelVersionInfo,
    NotFound,
    RegisteredModelInfo,
    RunInfo,
    TrackingError,
    TrackingTarget,
    TrackingUnauthorized,
    TrackingUnavailable,
)

logger = logging.getLogger("mlflow_operator.mlflow")
T = TypeVar("T")

_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "ENDPOINT_NOT_FOUND"}
_ALREADY_EXISTS = {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}
_INVALID = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE", "MALFORMED_REQUEST", "RESOURCE_CONFLICT"}
_UNAUTHORIZED = {"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"}


_TRANSPORT_FAILURE = re.compile(r"API request to (?P<url>\S+) failed with (?:timeout )?exception (?P<cause>.*)", re.S)


def _transport_summary(message: str) -> str | None:
    """A short reason for a request that never got an answer, instead of urllib3's chain."""
    match = _TRANSPORT_FAILURE.search(message)
    if not match:
        return None
    parts = urlsplit(match.group("url"))
    server, cause = f"{parts.scheme}://{parts.netloc}", match.group("cause")
    if "Connection refused" in cause:
        return f"cannot connect to {server}: connection refused"
    if "timed out" in cause or "Timeout" in cause:
        return f"no answer from {server} in time"
    if "Name or service not known" in cause or "NameResolutionError" in cause or "nodename nor servname" in cause:
        return f"cannot resolve the host of {server}"
    if "too many 5" in cause or "ResponseError" in cause:
        return f"{server} kept answering with server errors (5xx)"
    if "SSL" in cause or "CERTIFICATE" in cause:
        return f"TLS failed with {server}: {cause.splitlines()[0][:300]}"
    return f"request to {server} failed: {cause.splitlines()[0][:300]}"


def translate(error: Exception) -> TrackingError:
    """Map an MLflow (or transport) exception to the operator's error types."""
    if isinstance(error, TrackingError):
        return error
    if isinstance(error, MlflowException) and (summary := _transport_summary(str(error.message))):
        return TrackingUnavailable(summary)
    if isinstance(error, MlflowException):
        code = error.error_code or ""
        status = error.get_http_status_code()
        message = error.message if hasattr(error, "message") else str(error)
        if code in _NOT_FOUND or status == 404:
            return NotFound(message)
        if code in _ALREADY_EXISTS:
            return AlreadyExists(message)
        if code in _UNAUTHORIZED or status in (401, 403):
            return TrackingUnauthorized(message)
        if code in _INVALID or status == 400:
            return InvalidRequest(message)
        return TrackingUnavailable(message)
    return TrackingUnavailable(f"{type(error).__name__}: {error}")


@dataclass
class _Stores:
    tracking: TrackingRestStore
    registry: RegistryRestStore


class MlflowGateway:
    """Async facade over MLflow's REST stores, one pair of stores per tracking target."""

    def __init__(self, concurrency: int = 8) -> None:
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="mlflow")
        self._stores: dict[TrackingTarget, _Stores] = {}

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _stores_for(self, target: TrackingTarget) -> _Stores:
        stores = self._stores.get(target)
        if stores is None:
            credentials = target.credentials
            host_creds = MlflowHostCreds(
                host=target.uri,
                username=credentials.username,
                password=credentials.password,
                token=credentials.token,
            )
            get_creds = lambda: host_creds  # noqa: E731 - the stores call it per request
            stores = _Stores(tracking=TrackingRestStore(get_creds), registry=RegistryRestStore(get_creds))
            if len(self._stores) > 256:  # credentials rotate; do not grow without bound
                self._stores.clear()
            self._stores[target] = stores
        return stores

    async def _call(self, target: TrackingTarget, operation: str, fn: Callable[[_Stores], T]) -> T:
        stores = self._stores_for(target)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await loop.run_in_executor(self._executor, fn, stores)
        except Exception as error:  # noqa: BLE001 - translated and re-raised
            translated = translate(error)
            outcome = translated.reason
            if translated is not error:
                raise translated from error
            raise
        finally:
            MLFLOW_REQUESTS.labels(operation=operation, outcome=outcome).observe(time.perf_counter() - started)

    # ------------------------------------------------------------------ experiments

    async def get_experiment(self, target: TrackingTarget, experiment_id: str) -> ExperimentInfo | None:
        try:
            experiment = await self._call(target, "get_experiment", lambda s: s.tracking.get_experiment(experiment_id))
        except NotFound:
            return None
        return _experiment(experiment)

    async def get_experiment_by_name(self, target: TrackingTarget, name: str) -> ExperimentInfo | None:
        experiment = await self._call(
            target, "get_experiment_by_name", lambda s: s.tracking.get_experiment_by_name(name)
        )
        return _experiment(experiment) if experiment is not None else None

    async def create_experiment(
        self, target: TrackingTarget, name: str, artifact_location: str | None, tags: dict[str, str]
    ) -> str:
        tag_list = [ExperimentTag(k, v) for k, v in tags.items()]
        return await self._call(
            target, "create_experiment",
            lambda s: s.tracking.create_experiment(name, artifact_location=artifact_location, tags=tag_list),
        )

    async def rename_experiment(self, target: TrackingTarget, experiment_id: str, new_name: str) -> None:
        await self._call(target, "rename_experiment", lambda s: s.tracking.rename_experiment(experiment_id, new_name))

    async def set_experiment_tag(self, target: TrackingTarget, experiment_id: str, key: str, value: str) -> None:
        await self._call(
            target, "set_experiment_tag",
            lambda s: s.tracking.set_experiment_tag(experiment_id, ExperimentTag(key, value)),
        )

    async def delete_experiment_tag(self, target: TrackingTarget, experiment_id: str, key: str) -> None:
        await self._call(
            target, "delete_experiment_tag", lambda s: s.tracking.delete_experiment_tag(experiment_id, key)
        )

    async def delete_experiment(self, target: TrackingTarget, experiment_id: str) -> None:
        await self._call(target, "delete_experiment", lambda s: s.tracking.delete_experiment(experiment_id))

    async def restore_experiment(self, target: TrackingTarget, experiment_id: str) -> None:
        await self._call(target, "restore_experiment", lambda s: s.tracking.restore_experiment(experiment_id))

    # ------------------------------------------------------------------ runs

    async def find_runs_by_tag(
        self, target: TrackingTarget, experiment_id: str, key: str, value: str
    ) -> list[RunInfo]:
        """Every run (active or deleted) in the experiment whose tag `key` equals `value`, oldest first."""
        escaped = value.replace("'", "\\'")
        runs = await self._call(
            target, "search_runs",
            lambda s: s.tracking.search_runs(
                experiment_ids=[experiment_id],
                filter_string=f"tags.`{key}` = '{escaped}'",
                run_view_type=ViewType.ALL,
                max_results=100,
                order_by=["attributes.start_time ASC"],
            ),
        )
        return [_run(run) for run in runs]

    async def get_run(self, target: TrackingTarget, run_id: str) -> RunInfo | None:
        try:
            run = await self._call(target, "get_run", lambda s: s.tracking.get_run(run_id))
        except NotFound:
            return None
        return _run(run)

    async def create_run(
        self, target: TrackingTarget, experiment_id: str, run_name: str, tags: dict[str, str], start_time_ms: int
    ) -> RunInfo:
        tag_list = [RunTag(k, v) for k, v in tags.items()]
        run = await self._call(
            target, "create_run",
            lambda s: s.tracking.create_run(
                experiment_id=experiment_id, user_id="mlflow-operator", start_time=start_time_ms,
                tags=tag_list, run_name=run_name,
            ),
        )
        return _run(run)

    async def log_params_and_tags(
        self, target: TrackingTarget, run_id: str, params: dict[str, str], tags: dict[str, str]
    ) -> None:
        """Log params and tags in batches of MLflow's per-request limit (100)."""
        items: list[Param | RunTag] = [Param(k, v) for k, v in params.items()]
        items += [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, len(items), 100):
            chunk = items[start:start + 100]
            chunk_params = [i for i in chunk if isinstance(i, Param)]
            chunk_tags = [i for i in chunk if isinstance(i, RunTag)]
            await self._call(
                target, "log_batch",
                lambda s, p=chunk_params, t=chunk_tags: s.tracking.log_batch(run_id, metrics=[], params=p, tags=t),
            )

    async def set_run_tag(self, target: TrackingTarget, run_id: str, key: str, value: str) -> None:
        await self._call(target, "set_tag", lambda s: s.tracking.set_tag(run_id, RunTag(key, value)))

    async def set_run_status(
        self, target: TrackingTarget, run_id: str, status: str, end_time_ms: int | None, run_name: str | None = None
    ) -> None:
        await self._call(
            target, "update_run_info",
            lambda s: s.tracking.update_run_info(run_id, run_status=status, end_time=end_time_ms, run_name=run_name),
        )

    async def delete_run(self, target: TrackingTarget, run_id: str) -> None:
        await self._call(target, "delete_run", lambda s: s.tracking.delete_run(run_id))

    async def logged_models_of_run(
        self, target: TrackingTarget, experiment_id: str, run_id: str
    ) -> list[LoggedModelInfo]:
        """Models the run logged (MLflow 3 logged models live beside, not inside, the run)."""
        escaped = run_id.replace("'", "\\'")
        models = await self._call(
            target, "search_logged_models",
            lambda s: s.tracking.search_logged_models(
                experiment_ids=[experiment_id], filter_string=f"source_run_id = '{escaped}'", max_results=100,
            ),
        )
        return [
            LoggedModelInfo(
                model_id=m.model_id,
                name=m.name,
                source_run_id=m.source_run_id,
                status=str(getattr(m.status, "name", m.status)),
                creation_timestamp=m.creation_timestamp,
            )
            for m in models
        ]

    # ------------------------------------------------------------------ registry

    async def get_registered_model(self, target: TrackingTarget, name: str) -> RegisteredModelInfo | None:
        try:
            model = await self._call(target, "get_registered_model", lambda s: s.registry.get_registered_model(name))
        except NotFound:
            return None
        return _registered_model(model)

    async def create_registered_model(
        self, target: TrackingTarget, name: str, tags: dict[str, str], description: str | None
    ) -> RegisteredModelInfo:
        tag_list = [RegisteredModelTag(k, v) for k, v in tags.items()]
        model = await self._call(
            target, "create_registered_model",
            lambda s: s.registry.create_registered_model(name, tags=tag_list, description=description),
        )
        return _registered_model(model)

    async def update_registered_model_description(self, target: TrackingTarget, name: str, description: str) -> None:
        await self._call(
            target, "update_registered_model", lambda s: s.registry.update_registered_model(name, description)
        )

    async def delete_registered_model(self, target: TrackingTarget, name: str) -> None:
        await self._call(target, "delete_registered_model", lambda s: s.registry.delete_registered_model(name))

    async def set_registered_model_tag(self, target: TrackingTarget, name: str, key: str, value: str) -> None:
        await self._call(
            target, "set_registered_model_tag",
            lambda s: s.registry.set_registered_model_tag(name, RegisteredModelTag(key, value)),
        )

    async def delete_registered_model_tag(self, target: TrackingTarget, name: str, key: str) -> None:
        await self._call(
            target, "delete_registered_model_tag", lambda s: s.registry.delete_registered_model_tag(name, key)
        )

    async def set_alias(self, target: TrackingTarget, name: str, alias: str, version: str) -> None:
        await self._call(
            target, "set_registered_model_alias",
            lambda s: s.registry.set_registered_model_alias(name, alias, version),
        )

    async def delete_alias(self, target: TrackingTarget, name: str, alias: str) -> None:
        await self._call(
            target, "delete_registered_model_alias", lambda s: s.registry.delete_registered_model_alias(name, alias)
        )

    async def model_versions(self, target: TrackingTarget, name: str) -> list[ModelVersionInfo]:
        """Every version of the model, lowest number first (paging through all of them)."""
        escaped = name.replace("'", "\\'")
        versions: list[Any] = []
        token: str | None = None
        while True:
            page = await self._call(
                target, "search_model_versions",
                lambda s, t=token: s.registry.search_model_versions(
                    filter_string=f"name = '{escaped}'", max_results=200_000, page_token=t
                ),
            )
            versions.extend(page)
            token = getattr(page, "token", None)
            if not token:
                break
        infos = [_model_version(v) for v in versions if v.name == name]
        return sorted(infos, key=lambda v: int(v.version))

    async def create_model_version(
        self, target: TrackingTarget, name: str, source: str, run_id: str | None, model_id: str | None,
        tags: dict[str, str], description: str | None = None,
    ) -> ModelVersionInfo:
        tag_list = [ModelVersionTag(k, v) for k, v in tags.items()]
        mv = await self._call(
            target, "create_model_version",
            lambda s: s.registry.create_model_version(
                name, source, run_id=run_id, tags=tag_list, description=description, model_id=model_id
            ),
        )
        return _model_version(mv)

    async def update_model_version_description(
        self, target: TrackingTarget, name: str, version: str, description: str
    ) -> None:
        await self._call(
            target, "update_model_version", lambda s: s.registry.update_model_version(name, version, description)
        )

    async def transition_stage(
        self, target: TrackingTarget, name: str, version: str, stage: str, archive_existing: bool
    ) -> None:
        await self._call(
            target, "transition_model_version_stage",
            lambda s: s.registry.transition_model_version_stage(name, version, stage, archive_existing),
        )

    async def set_model_version_tag(
        self, target: TrackingTarget, name: str, version: str, key: str, value: str
    ) -> None:
        await self._call(
            target, "set_model_version_tag",
            lambda s: s.registry.set_model_version_tag(name, version, ModelVersionTag(key, value)),
        )

    async def delete_model_version_tag(self, target: TrackingTarget, name: str, version: str, key: str) -> None:
        await self._call(
            target, "delete_model_version_tag", lambda s: s.registry.delete_model_version_tag(name, version, key)
        )


# --------------------------------------------------------------------------- conversions


def _experiment(experiment: Any) -> ExperimentInfo:
    return ExperimentInfo(
        experiment_id=str(experiment.experiment_id),
        name=experiment.name,
        lifecycle_stage=experiment.lifecycle_stage,
        artifact_location=experiment.artifact_location,
        tags=dict(experiment.tags or {}),
    )


def _run(run: Any) -> RunInfo:
    info, data = run.info, run.data
    return RunInfo(
        run_id=info.run_id,
        experiment_id=str(info.experiment_id),
        run_name=info.run_name,
        status=str(info.status),
        lifecycle_stage=info.lifecycle_stage,
        start_time=info.start_time,
        end_time=info.end_time,
        tags=dict(data.tags or {}),
        params=dict(data.params or {}),
        metrics=dict(data.metrics or {}),
    )


def _registered_model(model: Any) -> RegisteredModelInfo:
    aliases = model.aliases or {}
    if isinstance(aliases, list):  # older servers answer a list of {alias, version}
        aliases = {a.alias: a.version for a in aliases}
    return RegisteredModelInfo(
        name=model.name,
        description=model.description or "",
        tags=dict(model.tags or {}),
        aliases={str(k): str(v) for k, v in aliases.items()},
    )


def _model_version(mv: Any) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name,
        version=str(mv.version),
        stage=mv.current_stage or "None",
        description=mv.description or "",
        source=mv.source,
        run_id=mv.run_id or None,
        status=str(mv.status),
        aliases=tuple(mv.aliases or ()),
        tags=dict(mv.tags or {}),
    )
