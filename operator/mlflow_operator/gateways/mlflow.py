"""The one place the operator talks to MLflow.

It speaks MLflow's REST API (the JSON the `mlflow` client sends and reads) with `requests`,
with per-target credentials instead of process-wide environment variables; runs each
blocking call in a bounded thread pool so the event loop never waits on the network; times
every call for /metrics; and turns failures into the operator's own error types. (The
`mlflow` package itself weighs 40 MiB in memory once imported, a third of the operator's
footprint; decision 0018.)
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from mlflow_operator.runtime.metrics import MLFLOW_REQUESTS, MODEL_VERSIONS_READ, RECONCILING_KIND
from mlflow_operator.scheduling.priority import URGENT, PriorityLimiter, ServerBusy
from mlflow_operator.tracking.entities import (
    AlreadyExists,
    ExperimentInfo,
    InvalidRequest,
    InvalidResponse,
    LoggedModelInfo,
    ModelVersionInfo,
    NotFound,
    RegisteredModelInfo,
    RunInfo,
    TrackingError,
    TrackingRejected,
    TrackingStalled,
    TrackingTarget,
    TrackingUnauthorized,
    TrackingUnavailable,
)
from mlflow_operator.tracking.servers import Origin, describe_origin, origin_of

API = "/api/2.0/mlflow"
# How a request names its MLflow workspace on a server with workspaces.
WORKSPACE_HEADER = "X-MLFLOW-WORKSPACE"
_NOT_FOUND = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "ENDPOINT_NOT_FOUND"}
_ALREADY_EXISTS = {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}
_INVALID = {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "INVALID_STATE", "MALFORMED_REQUEST", "RESOURCE_CONFLICT"}
_UNAUTHORIZED = {"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"}
_RETRYABLE_STATUS = {408, 425, 429}
# What MLflow's own client retries (with backoff), for every method: a retried create can
# make a duplicate, which the reconcilers find by tag (see the TrainingRun's write-ahead id).
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
# A server that has freed none of its slots for this long is stalled: calls stop waiting for
# it (priority.PriorityLimiter), so that it holds only its slots' share of the workers.
STALLED_SERVER_SECONDS = 5.0
# The longest answer read from a server: a page of 1,000 experiments or registered models with
# their tags, or of the versions one search returns, is far below it.
MAX_REPLY_BYTES = 64 * 2**20


@dataclass(frozen=True)
class HttpSettings:
    """How requests to MLflow are made: per-request timeout (s), retries of transient failures."""

    timeout: float = 10.0
    max_retries: int = 2
    backoff_factor: float = 1.0
    backoff_jitter: float = 0.5
    max_reply_bytes: int = MAX_REPLY_BYTES


class Answered(Exception):
    """MLflow answered, but not with success: the HTTP status (200: a body that is not MLflow's
    JSON) and MLflow's error code (only a name from MLflow's own enum is kept), never the body."""

    def __init__(self, status: int, code: str | None = None) -> None:
        super().__init__(f"HTTP {status} ({code or 'no error code'})")
        self.status, self.code = status, code


class ReplyTooLarge(Exception):
    """The server's answer was longer than the operator reads."""


def _read_capped(response: requests.Response, limit: int) -> bytes:
    """The answer's body, read in chunks, up to `limit` bytes: a server cannot make the
    operator hold an answer of any size in memory."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ReplyTooLarge()
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_content(chunk_size=65536):
        size += len(chunk)
        if size > limit:
            raise ReplyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def _error_code(body_bytes: bytes) -> str | None:
    try:
        body = json.loads(body_bytes)
    except ValueError:
        return None
    code = body.get("error_code") if isinstance(body, dict) else None
    return code if isinstance(code, str) and code.replace("_", "").isalnum() and code.isupper() else None


def _transport_summary(error: requests.RequestException, server: str) -> str:
    """A short reason for a request that never got an answer, instead of urllib3's chain.
    Only fixed phrases are kept from the cause: nothing the server sent is repeated."""
    cause = str(error)
    if isinstance(error, requests.exceptions.SSLError):
        verify = " (certificate verify failed)" if "CERTIFICATE_VERIFY_FAILED" in cause else ""
        return f"TLS failed with {server}{verify}"
    if isinstance(error, requests.exceptions.Timeout) or "timed out" in cause:
        return f"no answer from {server} in time"
    if isinstance(error, requests.exceptions.RetryError) or "too many 5" in cause:
        return f"{server} kept answering with server errors (5xx)"
    if "Connection refused" in cause:
        return f"cannot connect to {server}: connection refused"
    if "Name or service not known" in cause or "NameResolutionError" in cause or "nodename nor servname" in cause:
        return f"cannot resolve the host of {server}"
    if isinstance(error, requests.exceptions.ChunkedEncodingError) or any(
            phrase in cause for phrase in ("RemoteDisconnected", "Connection aborted", "reset by peer")):
        return f"{server} closed the connection without an answer"
    return f"request to {server} failed before an answer"


def _refused_here(error: ReplyTooLarge | ServerBusy, operation: str, server: str) -> TrackingError:
    """What the operator itself gave up on: an answer too long to read, a stalled server."""
    if isinstance(error, ReplyTooLarge):
        return InvalidResponse(f"{server} answered {operation} with more than the operator reads "
                               f"({MAX_REPLY_BYTES // 2**20} MiB)")
    return TrackingStalled(f"{server} has freed none of its connections for {STALLED_SERVER_SECONDS:g} s "
                               f"({error.waiting} requests waiting); {operation} is tried again later")


def translate(error: Exception, operation: str = "request", server: str = "the MLflow server") -> TrackingError:
    """Map a failed request to the operator's error types.

    The message names the operation, the HTTP status and MLflow's error code, and never
    repeats what the server sent (its reply could be anything, e.g. another service's
    credentials behind a proxy)."""
    if isinstance(error, TrackingError):
        return error
    if isinstance(error, requests.RequestException):
        return TrackingUnavailable(_transport_summary(error, server))
    if isinstance(error, (ReplyTooLarge, ServerBusy)):
        return _refused_here(error, operation, server)
    if not isinstance(error, Answered):
        return TrackingUnavailable(f"{operation} on {server} failed ({type(error).__name__})")
    return _from_answer(error, operation, server)


def _from_answer(error: Answered, operation: str, server: str) -> TrackingError:
    """The error type for an answer that was not a success, by its status and MLflow's code."""
    status, code = error.status, error.code or "no error code"
    if status == 200:
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
# HTTP sessions kept (one per server and credentials).
MAX_SESSIONS = 256
# A search that pages on past this is a server that never says "last page".
MAX_PAGES = 1000


async def every_page(search: Callable[[str | None], Awaitable[tuple[list[Item], str | None]]]) -> list[Item]:
    """What a paged search finds on all its pages: `search(token)` returns one page and the
    next page's token (None after the last)."""
    found: list[Item] = []
    token: str | None = None
    for _ in range(MAX_PAGES):
        page, token = await search(token)
        found.extend(page)
        if token is None:
            return found
    raise InvalidResponse(f"the server kept answering with a next page after {MAX_PAGES} pages")


def model_name_filter(name: str) -> str:
    """A filter that finds exactly the versions of `name`. A name with both quote kinds has
    no filter (specs refuse such names; one made outside the operator is refused here, never
    widened into a LIKE pattern that would read much of the registry)."""
    literal = filter_literal(name)
    if literal is None:
        raise TrackingRejected(f"model name {name!r} contains both kinds of quote; MLflow's search filters "
                               "cannot name it")
    return f"name = {literal}"


class _Session:
    """One tracking target's HTTP session: its credentials, a connection pool of
    `concurrency` connections, MLflow's retries of transient failures."""

    def __init__(self, target: TrackingTarget, settings: HttpSettings, concurrency: int) -> None:
        self.base = target.uri.rstrip("/")
        self.timeout = settings.timeout
        self.max_reply_bytes = settings.max_reply_bytes
        self.http = requests.Session()
        retry = Retry(total=settings.max_retries, connect=settings.max_retries, read=settings.max_retries,
                      status=settings.max_retries, redirect=0, status_forcelist=TRANSIENT_STATUS,
                      allowed_methods=None, backoff_factor=settings.backoff_factor,
                      backoff_jitter=settings.backoff_jitter, raise_on_status=False)
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=concurrency, max_retries=retry)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)
        credentials = target.credentials
        if credentials.username and credentials.password:
            self.http.auth = (credentials.username, credentials.password)
        elif credentials.token:
            self.http.headers["Authorization"] = f"Bearer {credentials.token}"
        self.http.headers["User-Agent"] = "mlflow-operator"

    def call(self, method: str, endpoint: str, body: dict[str, Any], workspace: str | None = None) -> dict[str, Any]:
        """One request; its JSON answer. A redirect is an answer like any other (not followed:
        the allowlisted server is the only one the operator talks to). `workspace`: the MLflow
        workspace the request acts in (one session serves every namespace of a server)."""
        fields = {key: value for key, value in body.items() if value is not None}
        url = f"{self.base}{API}/{endpoint}"
        headers = {WORKSPACE_HEADER: workspace} if workspace else None
        if method == "GET":
            response = self.http.get(url, params=fields, headers=headers, timeout=self.timeout,
                                     allow_redirects=False, stream=True)
        else:
            response = self.http.request(method, url, json=fields, headers=headers, timeout=self.timeout,
                                         allow_redirects=False, stream=True)
        with response:
            body_bytes = _read_capped(response, self.max_reply_bytes)
            if response.status_code != 200:
                raise Answered(response.status_code, _error_code(body_bytes))
            try:
                answer = json.loads(body_bytes)
            except ValueError:
                raise Answered(200) from None
        if not isinstance(answer, dict):
            raise Answered(200)
        return answer


class MlflowGateway:
    """Async facade over MLflow's REST API, one HTTP session per tracking target.

    Each server gets its own thread pool of `concurrency` threads: a server that stops
    answering ties up only its own threads, never another tenant's. Servers are bounded by
    the allowlist, so the pools are too. Calls wait for a thread in priority order
    (scheduling/priority.py): those that start a run first."""

    def __init__(self, concurrency: int = 8, settings: HttpSettings | None = None) -> None:
        self._concurrency = concurrency
        self._settings = settings or HttpSettings()
        self._executors: dict[Origin, ThreadPoolExecutor] = {}
        self._limiters: dict[Origin, PriorityLimiter] = {}
        self._sessions: dict[TrackingTarget, _Session] = {}

    def close(self) -> None:
        for executor in self._executors.values():
            executor.shutdown(wait=False, cancel_futures=True)
        for session in self._sessions.values():
            session.http.close()

    def _executor_for(self, origin: Origin) -> ThreadPoolExecutor:
        executor = self._executors.get(origin)
        if executor is None:
            executor = self._executors[origin] = ThreadPoolExecutor(
                max_workers=self._concurrency, thread_name_prefix=f"mlflow-{origin[1]}:{origin[2]}"
            )
        return executor

    def _limiter_for(self, origin: Origin) -> PriorityLimiter:
        limiter = self._limiters.get(origin)
        if limiter is None:
            limiter = self._limiters[origin] = PriorityLimiter(self._concurrency,
                                                               stalled_after=STALLED_SERVER_SECONDS)
        return limiter

    def _session_for(self, target: TrackingTarget) -> _Session:
        """The target's session (one per server and credentials; the workspace is per request),
        the most recently used first to stay: credentials rotate, so the least recently used
        one goes past MAX_SESSIONS (not every session at once)."""
        key = dataclasses.replace(target, workspace=None, ui_url=None)
        session = self._sessions.pop(key, None)
        if session is None:
            session = _Session(key, self._settings, self._concurrency)
            while len(self._sessions) >= MAX_SESSIONS:
                stale = self._sessions.pop(next(iter(self._sessions)))
                stale.http.close()
        self._sessions[key] = session  # insertion order is use order
        return session

    async def _request(self, target: TrackingTarget, operation: str, method: str, endpoint: str,
                       body: dict[str, Any]) -> dict[str, Any]:
        """One REST call in the target's thread pool, timed, its failure translated."""
        session = self._session_for(target)
        origin = origin_of(target.uri)
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        outcome = "ok"
        try:
            async with self._limiter_for(origin).slot(urgent=URGENT.get()):
                return await loop.run_in_executor(self._executor_for(origin), session.call, method, endpoint,
                                                  body, target.workspace)
        except Exception as error:  # noqa: BLE001 - translated and re-raised
            translated = translate(error, operation, describe_origin(origin))
            outcome = translated.reason
            if translated is not error:
                # Not chained: the original message may hold the server's reply.
                raise translated from None
            raise
        finally:
            MLFLOW_REQUESTS.labels(kind=RECONCILING_KIND.get(), operation=operation, outcome=outcome).observe(
                time.perf_counter() - started)

    # ------------------------------------------------------------------ experiments

    async def get_experiment(self, target: TrackingTarget, experiment_id: str) -> ExperimentInfo | None:
        try:
            answer = await self._request(target, "get_experiment", "GET", "experiments/get",
                                         {"experiment_id": experiment_id})
        except NotFound:
            return None
        return _experiment_from_json(answer.get("experiment") or {})

    async def get_experiment_by_name(self, target: TrackingTarget, name: str) -> ExperimentInfo | None:
        try:
            answer = await self._request(target, "get_experiment_by_name", "GET", "experiments/get-by-name",
                                         {"experiment_name": name})
        except NotFound:
            return None
        return _experiment_from_json(answer.get("experiment") or {})

    async def create_experiment(
        self, target: TrackingTarget, name: str, artifact_location: str | None, tags: dict[str, str]
    ) -> str:
        answer = await self._request(target, "create_experiment", "POST", "experiments/create", {
            "name": name, "artifact_location": artifact_location or None, "tags": _tags_to_json(tags)})
        return _required(answer, "experiment_id", "a created experiment")

    async def rename_experiment(self, target: TrackingTarget, experiment_id: str, new_name: str) -> None:
        await self._request(target, "rename_experiment", "POST", "experiments/update",
                            {"experiment_id": experiment_id, "new_name": new_name})

    async def set_experiment_tag(self, target: TrackingTarget, experiment_id: str, key: str, value: str) -> None:
        await self._request(target, "set_experiment_tag", "POST", "experiments/set-experiment-tag",
                            {"experiment_id": experiment_id, "key": key, "value": value})

    async def delete_experiment_tag(self, target: TrackingTarget, experiment_id: str, key: str) -> None:
        await self._request(target, "delete_experiment_tag", "POST", "experiments/delete-experiment-tag",
                            {"experiment_id": experiment_id, "key": key})

    async def delete_experiment(self, target: TrackingTarget, experiment_id: str) -> None:
        await self._request(target, "delete_experiment", "POST", "experiments/delete",
                            {"experiment_id": experiment_id})

    async def restore_experiment(self, target: TrackingTarget, experiment_id: str) -> None:
        await self._request(target, "restore_experiment", "POST", "experiments/restore",
                            {"experiment_id": experiment_id})

    async def search_experiments_page(self, target: TrackingTarget, filter_string: str,
                                      page_token: str | None) -> tuple[list[ExperimentInfo], str | None]:
        """One page (up to 1,000) of the experiments matching `filter_string`, deleted ones
        included, and the token of the next page (None after the last)."""
        page = await self._request(target, "search_experiments", "POST", "experiments/search", {
            "filter": filter_string, "max_results": 1000, "view_type": "ALL", "page_token": page_token})
        return [_experiment_from_json(e) for e in _list(page.get("experiments"), "experiments")], _next_token(page)

    # ------------------------------------------------------------------ runs

    async def find_runs_by_tag(
        self, target: TrackingTarget, experiment_id: str, key: str, value: str
    ) -> list[RunInfo]:
        """Every run (active or deleted) in the experiment whose tag `key` equals `value`, oldest first."""
        literal = filter_literal(value)
        if literal is None:
            raise TrackingRejected(f"tag value {value!r} cannot be searched for in MLflow (it has both quotes)")
        answer = await self._request(target, "search_runs", "POST", "runs/search", {
            "experiment_ids": [experiment_id], "filter": f"tags.`{key}` = {literal}", "run_view_type": "ALL",
            "max_results": 100, "order_by": ["attributes.start_time ASC"]})
        return [_run_from_json(run) for run in _list(answer.get("runs"), "runs")]

    async def get_run(self, target: TrackingTarget, run_id: str) -> RunInfo | None:
        try:
            answer = await self._request(target, "get_run", "GET", "runs/get", {"run_id": run_id})
        except NotFound:
            return None
        return _run_from_json(answer.get("run") or {})

    async def metric_history(self, target: TrackingTarget, run_id: str, key: str) -> list[tuple[int, float]]:
        """Every (step, value) the run logged for metric `key`, in MLflow's order (all pages)."""

        async def page(token: str | None) -> tuple[list[tuple[int, float]], str | None]:
            answer = await self._request(target, "get_metric_history", "GET", "metrics/get-history", {
                "run_id": run_id, "metric_key": key, "max_results": 25000,
                **({"page_token": token} if token else {})})
            points = [_metric_point(item) for item in _list(answer.get("metrics"), "a metric's history")]
            return points, answer.get("next_page_token") or None

        return await every_page(page)

    async def create_run(
        self, target: TrackingTarget, experiment_id: str, run_name: str, tags: dict[str, str], start_time_ms: int
    ) -> RunInfo:
        answer = await self._request(target, "create_run", "POST", "runs/create", {
            "experiment_id": experiment_id, "user_id": "mlflow-operator", "start_time": start_time_ms,
            "tags": _tags_to_json(tags), "run_name": run_name})
        return _run_from_json(answer.get("run") or {})

    async def log_params_and_tags(
        self, target: TrackingTarget, run_id: str, params: dict[str, str], tags: dict[str, str],
        metrics: dict[str, float] | None = None,
    ) -> None:
        """Log params and tags (and metrics, in the first batch) in batches of MLflow's
        per-request limit (100 entries)."""
        items = [("params", key, value) for key, value in params.items()]
        items += [("tags", key, value) for key, value in tags.items()]
        timestamp = int(time.time() * 1000)
        pending = [{"key": key, "value": value, "timestamp": timestamp, "step": 0}
                   for key, value in (metrics or {}).items()]
        for start in range(0, max(len(items), 1), 100):
            chunk = items[start:start + 100]
            if chunk or pending:
                await self._request(target, "log_batch", "POST", "runs/log-batch", {
                    "run_id": run_id, "metrics": pending,
                    "params": [{"key": k, "value": v} for kind, k, v in chunk if kind == "params"],
                    "tags": [{"key": k, "value": v} for kind, k, v in chunk if kind == "tags"]})
            pending = []

    async def set_run_tag(self, target: TrackingTarget, run_id: str, key: str, value: str) -> None:
        await self._request(target, "set_tag", "POST", "runs/set-tag",
                            {"run_id": run_id, "run_uuid": run_id, "key": key, "value": value})

    async def set_run_status(
        self, target: TrackingTarget, run_id: str, status: str, end_time_ms: int | None, run_name: str | None = None
    ) -> None:
        await self._request(target, "update_run_info", "POST", "runs/update", {
            "run_id": run_id, "run_uuid": run_id, "status": status, "end_time": end_time_ms, "run_name": run_name})

    async def delete_run(self, target: TrackingTarget, run_id: str) -> None:
        await self._request(target, "delete_run", "POST", "runs/delete", {"run_id": run_id})

    async def logged_models_of_run(
        self, target: TrackingTarget, experiment_id: str, run_id: str
    ) -> list[LoggedModelInfo]:
        """Models the run logged (MLflow 3 logged models live beside, not inside, the run)."""
        literal = filter_literal(run_id) or "''"
        answer = await self._request(target, "search_logged_models", "POST", "logged-models/search", {
            "experiment_ids": [experiment_id], "filter": f"source_run_id = {literal}", "max_results": 100})
        return [_logged_model_from_json(m) for m in _list(answer.get("models"), "models")]

    # ------------------------------------------------------------------ registry

    async def get_registered_model(self, target: TrackingTarget, name: str) -> RegisteredModelInfo | None:
        try:
            answer = await self._request(target, "get_registered_model", "GET", "registered-models/get",
                                         {"name": name})
        except NotFound:
            return None
        return _registered_model_from_json(answer.get("registered_model") or {})

    async def create_registered_model(
        self, target: TrackingTarget, name: str, tags: dict[str, str], description: str | None
    ) -> RegisteredModelInfo:
        answer = await self._request(target, "create_registered_model", "POST", "registered-models/create", {
            "name": name, "tags": _tags_to_json(tags), "description": description})
        return _registered_model_from_json(answer.get("registered_model") or {})

    async def update_registered_model_description(self, target: TrackingTarget, name: str, description: str) -> None:
        await self._request(target, "update_registered_model", "PATCH", "registered-models/update",
                            {"name": name, "description": description})

    async def delete_registered_model(self, target: TrackingTarget, name: str) -> None:
        await self._request(target, "delete_registered_model", "DELETE", "registered-models/delete", {"name": name})

    async def set_registered_model_tag(self, target: TrackingTarget, name: str, key: str, value: str) -> None:
        await self._request(target, "set_registered_model_tag", "POST", "registered-models/set-tag",
                            {"name": name, "key": key, "value": value})

    async def delete_registered_model_tag(self, target: TrackingTarget, name: str, key: str) -> None:
        await self._request(target, "delete_registered_model_tag", "DELETE", "registered-models/delete-tag",
                            {"name": name, "key": key})

    async def set_alias(self, target: TrackingTarget, name: str, alias: str, version: str) -> None:
        await self._request(target, "set_registered_model_alias", "POST", "registered-models/alias",
                            {"name": name, "alias": alias, "version": version})

    async def delete_alias(self, target: TrackingTarget, name: str, alias: str) -> None:
        await self._request(target, "delete_registered_model_alias", "DELETE", "registered-models/alias",
                            {"name": name, "alias": alias})

    async def model_versions(self, target: TrackingTarget, name: str) -> list[ModelVersionInfo]:
        """Every version of the model, lowest number first (paging through all of them)."""
        name_filter = model_name_filter(name)
        found = await every_page(lambda token: self.search_model_versions_page(target, name_filter, token))
        return sorted((v for v in found if v.name == name), key=lambda v: int(v.version))

    async def search_model_versions_page(
        self, target: TrackingTarget, filter_string: str, page_token: str | None,
        order_by: str | None = None, max_results: int = 200_000,
    ) -> tuple[list[ModelVersionInfo], str | None]:
        """One page (by default up to 200,000, MLflow's limit) of the versions matching
        `filter_string`, in MLflow's order or by `order_by` (e.g. "last_updated_timestamp DESC")."""
        page = await self._request(target, "search_model_versions", "GET", "model-versions/search", {
            "filter": filter_string, "max_results": max_results, "page_token": page_token,
            "order_by": [order_by] if order_by else None})
        versions = [_model_version_from_json(v) for v in _list(page.get("model_versions"), "model versions")]
        MODEL_VERSIONS_READ.labels(kind=RECONCILING_KIND.get()).inc(len(versions))
        return versions, _next_token(page)

    async def search_registered_models_page(self, target: TrackingTarget, filter_string: str,
                                            page_token: str | None) -> tuple[list[RegisteredModelInfo], str | None]:
        """One page (up to 1,000, MLflow's limit) of the registered models matching `filter_string`."""
        page = await self._request(target, "search_registered_models", "GET", "registered-models/search", {
            "filter": filter_string, "max_results": 1000, "page_token": page_token})
        return ([_registered_model_from_json(m) for m in _list(page.get("registered_models"), "registered models")],
                _next_token(page))

    async def create_model_version(
        self, target: TrackingTarget, name: str, source: str, run_id: str | None, model_id: str | None,
        tags: dict[str, str], description: str | None = None,
    ) -> ModelVersionInfo:
        answer = await self._request(target, "create_model_version", "POST", "model-versions/create", {
            "name": name, "source": source, "run_id": run_id, "tags": _tags_to_json(tags),
            "description": description, "model_id": model_id})
        return _model_version_from_json(answer.get("model_version") or {})

    async def update_model_version_description(
        self, target: TrackingTarget, name: str, version: str, description: str
    ) -> None:
        await self._request(target, "update_model_version", "PATCH", "model-versions/update",
                            {"name": name, "version": version, "description": description})

    async def transition_stage(
        self, target: TrackingTarget, name: str, version: str, stage: str, archive_existing: bool
    ) -> None:
        await self._request(target, "transition_model_version_stage", "POST", "model-versions/transition-stage", {
            "name": name, "version": version, "stage": stage, "archive_existing_versions": archive_existing})

    async def set_model_version_tag(
        self, target: TrackingTarget, name: str, version: str, key: str, value: str
    ) -> None:
        await self._request(target, "set_model_version_tag", "POST", "model-versions/set-tag",
                            {"name": name, "version": version, "key": key, "value": value})

    async def delete_model_version_tag(self, target: TrackingTarget, name: str, version: str, key: str) -> None:
        await self._request(target, "delete_model_version_tag", "DELETE", "model-versions/delete-tag",
                            {"name": name, "version": version, "key": key})


# --------------------------------------------------------------------------- MLflow's JSON
# The fields are MLflow's REST API's; tests/unit/test_mlflow_json.py checks that they read as
# MLflow's own client reads them. A reply is checked against that shape as it is read: any
# allowlisted server may answer anything, and what it answers fails only the call that asked
# (InvalidResponse), never a pass over other objects. Nothing of the reply is repeated.


def _tags_to_json(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in tags.items()]


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidResponse(f"the server answered with {what} that is not a JSON object")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidResponse(f"the server answered with {what} that is not a JSON list")
    return value


def _text(item: dict[str, Any], key: str, what: str, default: str = "") -> str:
    """A string field; MLflow writes ids and numbers of int64 fields as strings or numbers."""
    value = item.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidResponse(f"the server answered with {what} whose {key} is not a string")
    return str(value)


def _required(item: dict[str, Any], key: str, what: str) -> str:
    value = _text(item, key, what)
    if not value:
        raise InvalidResponse(f"the server answered with {what} without {key}")
    return value


def _pairs_from_json(pairs: Any, what: str = "tags") -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in _list(pairs, what):
        pair = _object(pair, f"an item of {what}")
        found[_required(pair, "key", f"an item of {what}")] = _text(pair, "value", f"an item of {what}")
    return found


def _next_token(page: dict[str, Any]) -> str | None:
    return _text(page, "next_page_token", "a page") or None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _experiment_from_json(value: Any) -> ExperimentInfo:
    e = _object(value, "an experiment")
    return ExperimentInfo(
        experiment_id=_required(e, "experiment_id", "an experiment"),
        name=_text(e, "name", "an experiment"),
        lifecycle_stage=_text(e, "lifecycle_stage", "an experiment"),
        artifact_location=_text(e, "artifact_location", "an experiment"),
        tags=_pairs_from_json(e.get("tags")),
    )


def _run_from_json(value: Any) -> RunInfo:
    run = _object(value, "a run")
    info, data = _object(run.get("info") or {}, "a run's info"), _object(run.get("data") or {}, "a run's data")
    metrics: dict[str, float] = {}
    for metric in _list(data.get("metrics"), "a run's metrics"):
        metric = _object(metric, "a run's metric")
        raw = metric.get("value", 0.0)
        if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
            raise InvalidResponse("the server answered with a run's metric whose value is not a number")
        try:
            metrics[_required(metric, "key", "a run's metric")] = float(raw)
        except ValueError:
            raise InvalidResponse("the server answered with a run's metric whose value is not a number") from None
    return RunInfo(
        run_id=_text(info, "run_id", "a run") or _required(info, "run_uuid", "a run"),
        experiment_id=_text(info, "experiment_id", "a run"),
        run_name=_text(info, "run_name", "a run"),
        status=_text(info, "status", "a run"),
        lifecycle_stage=_text(info, "lifecycle_stage", "a run"),
        start_time=_int_or_none(info.get("start_time")),
        end_time=_int_or_none(info.get("end_time")),
        tags=_pairs_from_json(data.get("tags"), "a run's tags"),
        params=_pairs_from_json(data.get("params"), "a run's params"),
        metrics=metrics,
    )


def _metric_point(value: Any) -> tuple[int, float]:
    """(step, value) of one entry of a metric's history."""
    point = _object(value, "a metric's history entry")
    raw, step = point.get("value", 0.0), point.get("step", 0)
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)) or isinstance(step, bool) \
            or not isinstance(step, (int, str)):
        raise InvalidResponse("the server answered with a metric history entry that is not a number")
    try:
        return int(step), float(raw)
    except ValueError:
        raise InvalidResponse("the server answered with a metric history entry that is not a number") from None


def _logged_model_from_json(value: Any) -> LoggedModelInfo:
    info = _object(_object(value, "a logged model").get("info") or {}, "a logged model's info")
    return LoggedModelInfo(
        model_id=_required(info, "model_id", "a logged model"),
        name=_text(info, "name", "a logged model"),
        source_run_id=_text(info, "source_run_id", "a logged model") or None,
        status=_text(info, "status", "a logged model").removeprefix("LOGGED_MODEL_"),
        creation_timestamp=_int_or_none(info.get("creation_timestamp_ms")),
    )


def _registered_model_from_json(value: Any) -> RegisteredModelInfo:
    m = _object(value, "a registered model")
    aliases: dict[str, str] = {}
    for alias in _list(m.get("aliases"), "a registered model's aliases"):
        alias = _object(alias, "a registered model's alias")
        aliases[_required(alias, "alias", "an alias")] = _text(alias, "version", "an alias")
    return RegisteredModelInfo(
        name=_required(m, "name", "a registered model"),
        description=_text(m, "description", "a registered model"),
        tags=_pairs_from_json(m.get("tags")),
        aliases=aliases,
        last_updated=_int_or_none(m.get("last_updated_timestamp")),
    )


def _model_version_from_json(value: Any) -> ModelVersionInfo:
    v = _object(value, "a model version")
    aliases = _list(v.get("aliases"), "a model version's aliases")
    if not all(isinstance(alias, str) for alias in aliases):
        raise InvalidResponse("the server answered with a model version whose aliases are not strings")
    return ModelVersionInfo(
        name=_required(v, "name", "a model version"),
        version=_required(v, "version", "a model version"),
        stage=_text(v, "current_stage", "a model version") or "None",
        description=_text(v, "description", "a model version"),
        source=_text(v, "source", "a model version"),
        run_id=_text(v, "run_id", "a model version") or None,
        status=_text(v, "status", "a model version"),
        aliases=tuple(aliases),
        tags=_pairs_from_json(v.get("tags")),
        last_updated=_int_or_none(v.get("last_updated_timestamp")),
    )
