"""The one place the operator's own logic calls the Kubernetes API.

kopf watches and patches the custom resources it handles; everything else (Secrets, Jobs,
Pods, reading another custom resource, writing status early) goes through here: the
blocking official client in a bounded thread pool, with every call timed for /metrics.
Secret values are returned to the caller and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from mlflow_operator.api.common import GROUP, VERSION
from mlflow_operator.cluster import ContainerExit, ContainerImage, JobSnapshot, PodSnapshot
from mlflow_operator.logic import timestamps
from mlflow_operator.metrics import KUBERNETES_REQUESTS, RECONCILING_KIND

T = TypeVar("T")
REQUEST_TIMEOUT = 30
# A Secret's owner consents to the operator using it by labelling it so.
CREDENTIALS_LABEL = f"{GROUP}/credentials"


@dataclass(frozen=True)
class CredentialsSecret:
    name: str
    opted_in: bool
    data: dict[str, str] = field(repr=False)


# The only keys whose values the operator keeps from a credentials Secret.
CREDENTIAL_KEYS = frozenset({"token", "username", "password"})


def credentials_data(encoded: Mapping[str, str] | None) -> dict[str, str]:
    """A labelled Secret's `data` as the operator keeps it: the credential keys decoded, any
    other key by its name only (to say which keys are there when none is usable)."""
    return {key: base64.b64decode(value).decode("utf-8", errors="replace") if key in CREDENTIAL_KEYS else ""
            for key, value in (encoded or {}).items()}


class KubernetesError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


def _load_configuration() -> client.Configuration:
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        config.load_kube_config(client_configuration=configuration)
    return configuration


def _json(response: Any) -> dict[str, Any]:
    """The JSON of a reply read without the client's models (much less CPU per call)."""
    return json.loads(response.data)


def _error(error: ApiException) -> KubernetesError:
    message = error.reason or ""
    with contextlib.suppress(ValueError):  # a body that is not JSON: keep the reason
        message = json.loads(error.body or "{}").get("message") or message
    return KubernetesError(error.status or 0, error.reason or "", message)


class KubernetesGateway:
    def __init__(self, concurrency: int = 8, configuration: client.Configuration | None = None) -> None:
        configuration = configuration or _load_configuration()
        configuration.connection_pool_maxsize = concurrency  # one connection per thread
        self._api = client.ApiClient(configuration)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kube")
        self.core = client.CoreV1Api(self._api)
        self.batch = client.BatchV1Api(self._api)
        self.custom = client.CustomObjectsApi(self._api)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._api.close()

    async def _call(self, operation: str, fn: Callable[[], T]) -> T:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await loop.run_in_executor(self._executor, fn)
        except ApiException as error:
            outcome = str(error.status)
            raise _error(error) from None
        finally:
            KUBERNETES_REQUESTS.labels(kind=RECONCILING_KIND.get(), operation=operation, outcome=outcome).observe(time.perf_counter() - started)

    # ------------------------------------------------------------------ secrets

    async def read_credentials_secret(self, namespace: str, name: str) -> CredentialsSecret | None:
        """The Secret, or None if it does not exist. Its values are decoded only when it carries
        the opt-in label; otherwise the caller gets its name and labels and nothing else."""
        try:
            secret = await self._call(
                "read_secret",
                lambda: self.core.read_namespaced_secret(name, namespace, _request_timeout=REQUEST_TIMEOUT),
            )
        except KubernetesError as error:
            if error.status == 404:
                return None
            raise
        labels = dict(secret.metadata.labels or {})
        if labels.get(CREDENTIALS_LABEL) != "true":
            return CredentialsSecret(name=name, opted_in=False, data={})
        return CredentialsSecret(name=name, opted_in=True, data=credentials_data(secret.data))

    # ------------------------------------------------------------------ custom resources

    async def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call(
                f"get_{plural}",
                lambda: self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
                ),
            )
        except KubernetesError as error:
            if error.status == 404:
                return None
            raise

    async def get_peering_status(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The peers kopf recorded in its peering object (cluster-wide when `namespace` is None);
        None: no such object."""
        def read() -> Any:
            if namespace is None:
                return self.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", name,
                                                             _request_timeout=REQUEST_TIMEOUT)
            return self.custom.get_namespaced_custom_object("kopf.dev", "v1", namespace, "kopfpeerings", name,
                                                            _request_timeout=REQUEST_TIMEOUT)
        try:
            found = await self._call("get_kopfpeering", read)
        except KubernetesError as error:
            if error.status == 404:
                return None
            raise
        return dict(found.get("status") or {})

    async def list_objects(self, plural: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        result = await self._call(
            f"list_{plural}",
            lambda: self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, label_selector=label_selector, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        return list(result.get("items") or [])

    async def create_object(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create one of the operator's own objects (a sweep's trial); 409 if the name is taken."""
        return await self._call(
            f"create_{plural}",
            lambda: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, body, _request_timeout=REQUEST_TIMEOUT
            ),
        )

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any],
                           resource_version: str | None = None) -> str:
        """Merge-patch the status subresource now (not at the end of the handler, as kopf does).

        With `resource_version`, the write applies only to that version of the object (409
        otherwise), so a decision made on a stale read never lands. Returns the new version."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        result = await self._call(
            f"patch_{plural}_status",
            lambda: self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, plural, name, body, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        return str(result["metadata"]["resourceVersion"])

    # ------------------------------------------------------------------ jobs and pods

    async def get_job(self, namespace: str, name: str) -> JobSnapshot | None:
        try:
            return job_snapshot(await self._call(
                "read_job",
                lambda: _json(self.batch.read_namespaced_job(name, namespace, _request_timeout=REQUEST_TIMEOUT,
                                                             _preload_content=False)),
            ))
        except KubernetesError as error:
            if error.status == 404:
                return None
            raise

    async def create_job(self, namespace: str, body: dict[str, Any], dry_run: bool = False) -> JobSnapshot:
        kwargs: dict[str, Any] = {"_request_timeout": REQUEST_TIMEOUT, "_preload_content": False}
        if dry_run:
            kwargs["dry_run"] = "All"
        return job_snapshot(await self._call(
            "create_job_dry_run" if dry_run else "create_job",
            lambda: _json(self.batch.create_namespaced_job(namespace, body, **kwargs)),
        ))

    async def delete_job(self, namespace: str, name: str, propagation: str = "Background") -> bool:
        """Delete the Job and (by propagation) its pods; False if it was already gone."""
        try:
            await self._call(
                "delete_job",
                lambda: self.batch.delete_namespaced_job(
                    name, namespace, propagation_policy=propagation, _request_timeout=REQUEST_TIMEOUT
                ),
            )
            return True
        except KubernetesError as error:
            if error.status == 404:
                return False
            raise

    async def remove_job_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        """Take `finalizer` off the Job (a no-op if it is gone or does not carry it). A JSON
        patch that tests the list first, so another controller's finalizer is never lost."""

        async def read() -> list[str] | None:
            job = await self.get_job(namespace, name)
            return None if job is None else list(job.finalizers)

        async def write(finalizers: list[str], keep: list[str]) -> None:
            patch = [{"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                     {"op": "replace", "path": "/metadata/finalizers", "value": keep}]
            await self._call("patch_job", lambda: self.batch.patch_namespaced_job(
                name, namespace, patch, _request_timeout=REQUEST_TIMEOUT))

        await self._remove_finalizer(f"Job {name}", finalizer, read, write)

    async def remove_object_finalizer(self, plural: str, namespace: str, name: str, finalizer: str) -> None:
        """Take `finalizer` off one of the operator's own objects (a no-op if gone or absent).
        A merge patch (the only kind this client sends for custom objects) on the version read,
        so a list that changed meanwhile is read again rather than overwritten."""
        version = ""

        async def read() -> list[str] | None:
            nonlocal version
            obj = await self.get_object(plural, namespace, name)
            if obj is None:
                return None
            version = obj["metadata"]["resourceVersion"]
            return list(obj["metadata"].get("finalizers") or [])

        async def write(finalizers: list[str], keep: list[str]) -> None:
            body = {"metadata": {"resourceVersion": version, "finalizers": keep}}
            await self._call(f"patch_{plural}", lambda: self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, name, body, _request_timeout=REQUEST_TIMEOUT))

        await self._remove_finalizer(f"{plural}/{name}", finalizer, read, write)

    @staticmethod
    async def _remove_finalizer(what: str, finalizer: str, read: Callable[[], Awaitable[list[str] | None]],
                                write: Callable[[list[str], list[str]], Awaitable[None]]) -> None:
        for _ in range(5):
            finalizers = await read()
            if finalizers is None or finalizer not in finalizers:
                return
            try:
                await write(finalizers, [f for f in finalizers if f != finalizer])
                return
            except KubernetesError as error:
                if error.status == 404:
                    return
                if error.status not in (409, 422):  # the object or its list changed: read again
                    raise
        raise KubernetesError(409, "Conflict", f"{what} kept changing while its finalizer was removed")

    async def list_objects_everywhere(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        """The operator's objects of one kind in `namespace`, or in every namespace (None)."""
        if namespace is not None:
            return await self.list_objects(plural, namespace)
        result = await self._call(
            f"list_{plural}",
            lambda: self.custom.list_cluster_custom_object(GROUP, VERSION, plural, _request_timeout=REQUEST_TIMEOUT),
        )
        return list(result.get("items") or [])

    async def list_jobs(self, namespace: str | None, label_selector: str) -> list[JobSnapshot]:
        """Jobs matching `label_selector` in `namespace`, or in every namespace (None)."""
        result = await self._call(
            "list_jobs",
            lambda: self.batch.list_namespaced_job(
                namespace, label_selector=label_selector, _request_timeout=REQUEST_TIMEOUT)
            if namespace is not None else
            self.batch.list_job_for_all_namespaces(label_selector=label_selector, _request_timeout=REQUEST_TIMEOUT),
        )
        return [job_snapshot(job) for job in result.items]

    async def list_pods(self, namespace: str, label_selector: str) -> list[PodSnapshot]:
        result = await self._call(
            "list_pods",
            lambda: self.core.list_namespaced_pod(
                namespace, label_selector=label_selector, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        return [pod_snapshot(pod) for pod in result.items]


_SERIALIZER = client.ApiClient.__new__(client.ApiClient)  # sanitize_for_serialization needs no state


def job_snapshot(job: Any) -> JobSnapshot:
    """What the operator reads from a Job (a V1Job, or the JSON of a watch event or a raw
    reply): identity, bookkeeping, progress and how it ended."""
    manifest: Mapping[str, Any] = job if isinstance(job, Mapping) else _SERIALIZER.sanitize_for_serialization(job)
    metadata, status = manifest.get("metadata") or {}, manifest.get("status") or {}
    conditions = status.get("conditions") or []
    finished = None
    finish_time = timestamps.parse(status.get("completionTime"))
    for condition in conditions:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            finished = (condition["type"], condition.get("reason") or "", condition.get("message") or "")
            if condition["type"] == "Failed":
                finish_time = timestamps.parse(condition.get("lastTransitionTime"))
    return JobSnapshot(
        uid=metadata.get("uid", ""),
        owner_uids=frozenset(ref.get("uid") for ref in metadata.get("ownerReferences") or []),
        name=metadata.get("name") or "",
        namespace=metadata.get("namespace") or "",
        labels=dict(metadata.get("labels") or {}),
        active=status.get("active") or 0,
        ready=status.get("ready") or 0,
        succeeded=status.get("succeeded") or 0,
        failed=status.get("failed") or 0,
        finished=finished,
        start_time=timestamps.parse(status.get("startTime")),
        completion_time=finish_time,
        deleting=metadata.get("deletionTimestamp") is not None,
        finalizers=tuple(metadata.get("finalizers") or ()),
    )


def pod_snapshot(pod: Any) -> PodSnapshot:
    exits = []
    for container in (pod.status.container_statuses if pod.status else None) or []:
        terminated = container.state.terminated if container.state else None
        if terminated and terminated.exit_code:
            exits.append(ContainerExit(container.name, terminated.exit_code, terminated.reason or "Error"))
    images = tuple(ContainerImage(c.name, c.image or "", c.image_id or "")
                   for c in (pod.status.container_statuses if pod.status else None) or [])
    created = pod.metadata.creation_timestamp
    return PodSnapshot(name=pod.metadata.name, failed_containers=tuple(exits),
                       node=pod.spec.node_name if pod.spec else None,
                       created=created.isoformat() if created else None, containers=images)
