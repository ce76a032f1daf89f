"""The one place the operator talks to MLflow.

It uses mlflow-skinny's REST stores (the same code `MlflowClient` uses) with per-target
credentials instead of process-wide environment variables, runs each blocking call in a
bounded thread pool so the event loop never waits on the network, times every call for
/metrics, and turns MLflow exceptions into the operator's own error types.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar
from urllib.parse import urlsplit

from mlflow.entities import ExperimentTag, Metric, Param, RunTag, ViewType
from mlflow.entities.model_registry import ModelVersionTag, RegisteredModelTag
from mlflow.exceptions import MlflowException
from mlflow.store.model_registry.rest_store import RestStore as RegistryRestStore
from mlflow.store.tracking.rest_store import RestStore as TrackingRestStore
from mlflow.utils.rest_utils import MlflowHostCreds, http_request, verify_rest_response

from mlflow_operator.metrics import MLFLOW_REQUESTS, RECONCILING_KIND
from mlflow_operator.servers import Origin, describe_origin, origin_of
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
    TrackingRejected,
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
_RETRYABLE_STATUS = {408, 425, 429}

_TRANSPORT_FAILURE = re.compile(r"API request to (?P<url>\S+) failed with (?:timeout )?exception (?P<cause>.*)", re.S)
_STATUS_IN_MESSAGE = re.compile(r"failed with error code (?P<status>\d{3}) ")


def _transport_summary(message: str) -> str | None:
    """A short reason for a request that never got an answer, instead of urllib3's chain.
    Only fixed phrases are kept from the cause: nothing the server sent is repeated."""
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
        verify = " (certificate verify failed)" if "CERTIFICATE_VERIFY_FAILED" in cause else ""
        return f"TLS failed with {server}{verify}"
    if "RemoteDisconnected" in cause or "Connection aborted" in cause or "reset by peer" in cause:
        return f"{server} closed the connection without an answer"
    return f"request to {server} failed before an answer"


def _known_code(error: MlflowException) -> str:
    """MLflow's error code name; only names from MLflow's own enum ever get here."""
    code = str(error.error_code or "")
    return code if code.replace("_", "").isalnum() and code.isupper() else "INTERNAL_ERROR"


def translate(error: Exception, operation: str = "request", server: str = "the MLflow server") -> TrackingError:
    """Map an MLflow (or transport) exception to the operator's error types.

    The message names the operation, the HTTP status and MLflow's error code, and never
    repeats what the server sent (its reply could be anything, e.g. another service's
    credentials behind a redirect or a proxy)."""
    if isinstance(error, TrackingError):
        return error
    if not isinstance(error, MlflowException):
        return TrackingUnavailable(f"{operation} on {server} failed ({type(error).__name__})")
    text = str(error.message) if hasattr(error, "message") else str(error)
    summary = _transport_summary(text)
    if summary:
        return TrackingUnavailable(summary)
    code = _known_code(error)
    status_match = _STATUS_IN_MESSAGE.search(text)
    status = int(status_match.group("status")) if status_match else error.get_http_status_code()
    if "successful but the response body was not" in text:
        return TrackingRejected(f"{server} answered {operation} with HTTP 200 but not with MLflow's JSON; "
                                "is the tracking URI an MLflow server?")
    answered = f"{server} answered {operation} with HTTP {status} ({code})"
    if code in _NOT_FOUND or status == 404:
        return NotFound(f"{answered}, expected 200")
    if code in _ALREADY_EXISTS:
        return AlreadyExists(f"{answered}: it exists already")
    if code in _UNAUTHORIZED or status in (401, 403):
        return TrackingUnauthorized(f"{answered}: check the credentials Secret")
    if code in _INVALID or status == 400:
        return InvalidRequest(f"{answered}: the request was refused as invalid")
    if status >= 500 or status in _RETRYABLE_STATUS:
        return TrackingUnavailable(f"{answered}, expected 200")
    return TrackingRejected(f"{answered}, expected 200")


def filter_literal(value: str) -> str | None:
    """`value` as a string literal in an MLflow filter, or None if it cannot be one.

    MLflow's filter parser has no escapes: it strips one pair of quotes and keeps the rest
    as it is. So a value is quoted with whichever quote it does not contain."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


Item = TypeVar("Item")


async def every_page(search: Callable[[str | None], Awaitable[tuple[list[Item], str | None]]]) -> list[Item]:
    """What a paged search finds on all its pages: `search(token)` returns one page and the
    next page's token (None after the last)."""
    found: list[Item] = []
    token: str | None = None
    while True:
        page, token = await search(token)
        found.extend(page)
        if token is None:
            return found


def model_name_filter(name: str) -> str:
    """A filter that finds every version of `name` (and perhaps more, to be filtered after)."""
    literal = filter_literal(name)
    if literal is not None:
        return f"name = {literal}"
    # Both quotes in the name: ask for the names that share its longest expressible prefix.
    prefix = name[: min(name.index("'"), name.index('"'))]
    return f"name LIKE '{prefix}%'"


@dataclass
class _Stores:
    tracking: TrackingRestStore
    registry: RegistryRestStore


class MlflowGateway:
    """Async facade over MLflow's REST stores, one pair of stores per tracking target.

    Each server gets its own thread pool of `concurrency` threads: a server that stops
    answering ties up only its own threads, never another tenant's. Servers are bounded by
    the allowlist, so the pools are too."""

    def __init__(self, concurrency: int = 8) -> None:
        self._concurrency = concurrency
        self._executors: dict[Origin, ThreadPoolExecutor] = {}
        self._stores: dict[TrackingTarget, _Stores] = {}

    def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)

    def _executor_for(self, origin: Origin) -> ThreadPoolExecutor:
        executor = self._executors.get(origin)
        if executor is None:
            executor = self._executors[origin] = ThreadPoolExecutor(
                max_workers=self._concurrency, thread_name_prefix=f"mlflow-{origin[1]}:{origin[2]}"
            )
        return executor

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
        origin = origin_of(target.uri)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await loop.run_in_executor(self._executor_for(origin), fn, stores)
        except Exception as error:  # noqa: BLE001 - translated and re-raised
            translated = translate(error, operation, describe_origin(origin))
            outcome = translated.reason
            if translated is not error:
                # Not chained: the original message may hold the server's reply.
                raise translated from None
            raise
        finally:
            MLFLOW_REQUESTS.labels(kind=RECONCILING_KIND.get(), operation=operation, outcome=outcome).observe(time.perf_counter() - started)

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

    async def search_experiments_page(self, target: TrackingTarget, filter_string: str,
                                      page_token: str | None) -> tuple[list[ExperimentInfo], str | None]:
        """One page (up to 1,000) of the experiments matching `filter_string`, deleted ones
        included, and the token of the next page (None after the last)."""
        body = {"filter": filter_string, "max_results": 1000, "view_type": "ALL", "page_token": page_token}
        page = await self._call(target, "search_experiments",
                                _search("POST", "/api/2.0/mlflow/experiments/search", body))
        return [_experiment_from_json(e) for e in page.get("experiments") or []], page.get("next_page_token") or None

    # ------------------------------------------------------------------ runs

    async def find_runs_by_tag(
        self, target: TrackingTarget, experiment_id: str, key: str, value: str
    ) -> list[RunInfo]:
        """Every run (active or deleted) in the experiment whose tag `key` equals `value`, oldest first."""
        literal = filter_literal(value)
        if literal is None:
            raise TrackingRejected(f"tag value {value!r} cannot be searched for in MLflow (it has both quotes)")
        runs = await self._call(
            target, "search_runs",
            lambda s: s.tracking.search_runs(
                experiment_ids=[experiment_id],
                filter_string=f"tags.`{key}` = {literal}",
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
        self, target: TrackingTarget, run_id: str, params: dict[str, str], tags: dict[str, str],
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Log params and tags (and metrics, in the first batch) in batches of MLflow's
        per-request limit (100 entries)."""
        items: list[Param | RunTag] = [Param(k, v) for k, v in params.items()]
        items += [RunTag(k, v) for k, v in tags.items()]
        timestamp = int(time.time() * 1000)
        pending = [Metric(k, v, timestamp, 0) for k, v in (metrics or {}).items()]
        for start in range(0, max(len(items), 1), 100):
            chunk = items[start:start + 100]
            chunk_params = [i for i in chunk if isinstance(i, Param)]
            chunk_tags = [i for i in chunk if isinstance(i, RunTag)]
            if chunk or pending:
                await self._call(target, "log_batch", _log_batch(run_id, chunk_params, chunk_tags, pending))
            pending = []

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
        literal = filter_literal(run_id) or "''"
        models = await self._call(
            target, "search_logged_models",
            lambda s: s.tracking.search_logged_models(
                experiment_ids=[experiment_id], filter_string=f"source_run_id = {literal}", max_results=100,
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
        name_filter = model_name_filter(name)
        found = await every_page(lambda token: self.search_model_versions_page(target, name_filter, token))
        return sorted((v for v in found if v.name == name), key=lambda v: int(v.version))

    async def search_model_versions_page(self, target: TrackingTarget, filter_string: str,
                                         page_token: str | None) -> tuple[list[ModelVersionInfo], str | None]:
        """One page (up to 200,000, MLflow's limit) of the versions matching `filter_string`."""
        params = {"filter": filter_string, "max_results": 200_000, "page_token": page_token}
        page = await self._call(target, "search_model_versions",
                                _search("GET", "/api/2.0/mlflow/model-versions/search", params))
        return ([_model_version_from_json(v) for v in page.get("model_versions") or []],
                page.get("next_page_token") or None)

    async def search_registered_models_page(self, target: TrackingTarget, filter_string: str,
                                            page_token: str | None) -> tuple[list[RegisteredModelInfo], str | None]:
        """One page (up to 1,000, MLflow's limit) of the registered models matching `filter_string`."""
        params = {"filter": filter_string, "max_results": 1000, "page_token": page_token}
        page = await self._call(target, "search_registered_models",
                                _search("GET", "/api/2.0/mlflow/registered-models/search", params))
        return ([_registered_model_from_json(m) for m in page.get("registered_models") or []],
                page.get("next_page_token") or None)
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


# The searches that drift checks share return thousands of entities per interval: their JSON
# is read into the operator's types directly. (The REST stores parse it into protobuf
# messages, then into MLflow's entities: ten times the CPU.) The fields are MLflow's REST API's.


def _search(method: str, endpoint: str, request: dict[str, Any]) -> Callable[[_Stores], dict[str, Any]]:
    """One search request, answered as JSON; errors raised as the REST stores raise them."""
    fields = {key: value for key, value in request.items() if value is not None}

    def call(stores: _Stores) -> dict[str, Any]:
        host_creds = stores.tracking.get_host_creds()
        if method == "GET":
            response = http_request(host_creds, endpoint, method, params=fields)
        else:
            response = http_request(host_creds, endpoint, method, json=fields)
        response = verify_rest_response(response, endpoint)
        answer = json.loads(response.text)
        return answer if isinstance(answer, dict) else {}

    return call


def _tags_from_json(tags: Any) -> dict[str, str]:
    return {str(t["key"]): str(t.get("value", "")) for t in tags or [] if "key" in t}


def _experiment_from_json(e: dict[str, Any]) -> ExperimentInfo:
    return ExperimentInfo(
        experiment_id=str(e["experiment_id"]),
        name=e.get("name", ""),
        lifecycle_stage=e.get("lifecycle_stage", ""),
        artifact_location=e.get("artifact_location", ""),
        tags=_tags_from_json(e.get("tags")),
    )


def _registered_model_from_json(m: dict[str, Any]) -> RegisteredModelInfo:
    return RegisteredModelInfo(
        name=m.get("name", ""),
        description=m.get("description") or "",
        tags=_tags_from_json(m.get("tags")),
        aliases={str(a["alias"]): str(a.get("version", "")) for a in m.get("aliases") or [] if "alias" in a},
    )


def _model_version_from_json(v: dict[str, Any]) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=v.get("name", ""),
        version=str(v.get("version", "")),
        stage=v.get("current_stage") or "None",
        description=v.get("description") or "",
        source=v.get("source", ""),
        run_id=v.get("run_id") or None,
        status=str(v.get("status", "")),
        aliases=tuple(v.get("aliases") or ()),
        tags=_tags_from_json(v.get("tags")),
    )


def _log_batch(run_id: str, params: list[Param], tags: list[RunTag],
               metrics: list[Metric] | None = None) -> Callable[[_Stores], None]:
    """One chunk of params, tags and metrics, bound now (not when the thread runs it)."""
    return lambda stores: stores.tracking.log_batch(run_id, metrics=metrics or [], params=params, tags=tags)
