"""The one place the operator's own logic calls the Kubernetes API.

kopf watches and patches the custom resources it handles; everything else (Secrets, Jobs,
Pods, reading another custom resource, writing status early) goes through here: plain REST
calls with `requests`, logged in as kopf logs in, in a bounded thread pool, every call timed
for /metrics. (The official client's generated models weigh 40 MiB in memory once imported,
and the operator reads JSON anyway; decision 0018.) Secret values are returned to the caller
and never logged.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import quote

import kopf
import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from mlflow_operator.api.common import GROUP, VERSION
from mlflow_operator.cluster.snapshots import (
    COMPLETION_INDEX_ANNOTATION,
    ContainerExit,
    ContainerImage,
    JobSnapshot,
    PodSnapshot,
)
from mlflow_operator.logic import timestamps
from mlflow_operator.runtime.metrics import KUBERNETES_REQUESTS, RECONCILING_KIND

REQUEST_TIMEOUT = 30
# A Secret's owner consents to the operator using it by labelling it so.
CREDENTIALS_LABEL = f"{GROUP}/credentials"
# The credentials are read again this often, so a rotated ServiceAccount token is picked up.
LOGIN_EVERY_SECONDS = 60.0
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


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


def in_cluster_connection(account_dir: Path = SERVICE_ACCOUNT_DIR,
                          environ: Mapping[str, str] = os.environ) -> kopf.ConnectionInfo | None:
    """The API server as a pod finds it: KUBERNETES_SERVICE_HOST and _PORT, as client-go
    does (kopf's own service-account login always names kubernetes.default.svc, which needs
    cluster DNS), with the ServiceAccount's token and CA. Read on every login, so a rotated
    token is picked up."""
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token = account_dir / "token"
    if not (host and port and token.exists()):
        return None
    namespace = account_dir / "namespace"
    return kopf.ConnectionInfo(
        server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
        ca_path=str(account_dir / "ca.crt"),
        scheme="Bearer",
        token=token.read_text().strip(),
        default_namespace=namespace.read_text().strip() if namespace.exists() else None,
    )


def cluster_connection() -> kopf.ConnectionInfo:
    """Where the API server is and how to log in: in a pod, its ServiceAccount; elsewhere
    (the sandbox, a laptop), KUBECONFIG or ~/.kube/config. kopf logs in the same way."""
    connection = in_cluster_connection() or kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    if connection is None:
        raise kopf.LoginError("no ServiceAccount, KUBECONFIG or ~/.kube/config to log in to the API server with")
    return connection


class _TlsAdapter(HTTPAdapter):
    """Connections with the login's own TLS context (its CA, its client certificate)."""

    def __init__(self, context: ssl.SSLContext, pool_maxsize: int) -> None:
        self._context = context
        # Connection failures are retried as the official client retries them (urllib3's
        # default); an answer never is.
        super().__init__(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=Retry(3, redirect=0))

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Verify as the login's context says, with its CAs only. requests would load its
        public CA bundle into that context on every new connection: the API server would
        be trusted with any public certificate, and each connection would cost a parse of
        the bundle (a fifth of the operator's CPU while it opens its connections)."""
        conn.cert_reqs = self._context.verify_mode
        conn.ca_certs = conn.ca_cert_dir = None


def _error(response: requests.Response) -> KubernetesError:
    message = response.reason or ""
    try:
        body = response.json()
    except ValueError:  # a body that is not JSON: keep the reason
        body = {}
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        message = body["message"]
    return KubernetesError(response.status_code, response.reason or "", message)


def _custom(namespace: str | None, plural: str, name: str = "", group: str = GROUP, version: str = VERSION) -> str:
    where = f"/namespaces/{quote(namespace)}" if namespace is not None else ""
    return f"/apis/{group}/{version}{where}/{plural}" + (f"/{quote(name)}" if name else "")


MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class KubernetesGateway:
    def __init__(self, concurrency: int = 8,
                 login: Callable[[], kopf.ConnectionInfo] = cluster_connection) -> None:
        self._login = login
        connection = login()
        self._base = connection.server.rstrip("/")
        self._headers = connection.as_http_headers()
        self._logged_in_at = time.monotonic()
        self._http = requests.Session()
        self._http.trust_env = False  # no proxy or .netrc from the environment: the login says it all
        adapter = _TlsAdapter(connection.as_ssl_context(), pool_maxsize=concurrency)
        self._http.mount("https://", adapter)
        self._http.mount("http://", adapter)
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="kube")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def _auth_headers(self) -> dict[str, str]:
        if time.monotonic() - self._logged_in_at > LOGIN_EVERY_SECONDS:
            self._headers = self._login().as_http_headers()
            self._logged_in_at = time.monotonic()
        return self._headers

    def _send(self, method: str, path: str, params: dict[str, str] | None = None, body: Any = None,
              content_type: str = "application/json") -> dict[str, Any]:
        headers = {**self._auth_headers(), "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        response = self._http.request(method, self._base + path, params=params or None, data=data,
                                      headers=headers, timeout=REQUEST_TIMEOUT, allow_redirects=False)
        with response:
            if not 200 <= response.status_code < 300:
                raise _error(response)
            answer = response.json()
        return answer if isinstance(answer, dict) else {}

    async def _call(self, operation: str, method: str, path: str, params: dict[str, str] | None = None,
                    body: Any = None, content_type: str = "application/json") -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await loop.run_in_executor(
                self._executor, lambda: self._send(method, path, params, body, content_type))
        except KubernetesError as error:
            outcome = str(error.status)
            raise
        finally:
            KUBERNETES_REQUESTS.labels(kind=RECONCILING_KIND.get(), operation=operation, outcome=outcome).observe(
                time.perf_counter() - started)

    # ------------------------------------------------------------------ secrets

    async def read_credentials_secret(self, namespace: str, name: str) -> CredentialsSecret | None:
        """The Secret, or None if it does not exist. Its values are decoded only when it carries
        the opt-in label; otherwise the caller gets its name and labels and nothing else."""
        try:
            secret = await self._call("read_secret", "GET", f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}")
        except KubernetesError as error:
            if error.status == 404:
                return None
            raise
        labels = dict((secret.get("metadata") or {}).get("labels") or {})
        if labels.get(CREDENTIALS_LABEL) != "true":
            return CredentialsSecret(name=name, opted_in=False, data={})
        return CredentialsSecret(name=name, opted_in=True, data=credentials_data(secret.get("data")))

    # ------------------------------------------------------------------ custom resources

    async def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return await self._call(f"get_{plural}", "GET", _custom(namespace, plural, name))
        except KubernetesError as error:
            if error.status == 404:
                return None
            raise

    async def annotate_object(self, plural: str, namespace: str, name: str, annotations: dict[str, str]) -> None:
        """Set annotations on one of the operator's own objects (a merge patch of those keys)."""
        await self._call(f"patch_{plural}", "PATCH", _custom(namespace, plural, name),
                         body={"metadata": {"annotations": annotations}}, content_type=MERGE_PATCH)

    async def get_peering_status(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The peers kopf recorded in its peering object (cluster-wide when `namespace` is None);
        None: no such object."""
        plural = "clusterkopfpeerings" if namespace is None else "kopfpeerings"
        try:
            found = await self._call("get_kopfpeering", "GET",
                                     _custom(namespace, plural, name, group="kopf.dev", version="v1"))
        except KubernetesError as error:
            if error.status == 404:
                return None
            raise
        return dict(found.get("status") or {})

    async def list_objects(self, plural: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        params = {"labelSelector": label_selector} if label_selector else None
        result = await self._call(f"list_{plural}", "GET", _custom(namespace, plural), params=params)
        return list(result.get("items") or [])

    async def create_object(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        """Create one of the operator's own objects (a sweep's trial); 409 if the name is taken."""
        return await self._call(f"create_{plural}", "POST", _custom(namespace, plural), body=body)

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any],
                           resource_version: str | None = None) -> dict[str, Any]:
        """Merge-patch the status subresource now (not at the end of the handler, as kopf does).

        With `resource_version`, the write applies only to that version of the object (409
        otherwise), so a decision made on a stale read never lands. Returns the object as
        written (its new resourceVersion and status)."""
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        result: dict[str, Any] = await self._call(f"patch_{plural}_status", "PATCH",
                                                  _custom(namespace, plural, name) + "/status",
                                                  body=body, content_type=MERGE_PATCH)
        return result

    # ------------------------------------------------------------------ jobs and pods

    async def get_job(self, namespace: str, name: str) -> JobSnapshot | None:
        try:
            return job_snapshot(await self._call("read_job", "GET", _jobs(namespace, name)))
        except KubernetesError as error:
            if error.status == 404:
                return None
            raise

    async def create_job(self, namespace: str, body: dict[str, Any], dry_run: bool = False) -> JobSnapshot:
        return job_snapshot(await self._call(
            "create_job_dry_run" if dry_run else "create_job", "POST", _jobs(namespace),
            params={"dryRun": "All"} if dry_run else None, body=body))

    async def ensure_service(self, namespace: str, body: dict[str, Any]) -> str | None:
        """Create the Service unless one of its name exists; the uid of the controller of the
        Service that now has that name (None: it has no controller)."""
        name = body["metadata"]["name"]
        path = f"/api/v1/namespaces/{quote(namespace)}/services"
        try:
            created = await self._call("create_service", "POST", path, body=body)
        except KubernetesError as error:
            if error.status != 409:
                raise
            created = await self._call("read_service", "GET", f"{path}/{quote(name)}")
        return controller_uid(created.get("metadata") or {})

    async def service_account_may(self, namespace: str, service_account: str, group: str, resource: str,
                                  verb: str, name: str | None = None) -> bool:
        """Whether Kubernetes RBAC lets `service_account` of `namespace` do `verb` on `resource`
        of `group` there (a SubjectAccessReview, as the ServiceAccount's token would be judged)."""
        attributes = {"group": group, "resource": resource, "verb": verb, "namespace": namespace,
                      **({"name": name} if name else {})}
        answer = await self._call("create_subject_access_review", "POST",
                                  "/apis/authorization.k8s.io/v1/subjectaccessreviews", body={
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{namespace}:{service_account}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"],
                "resourceAttributes": attributes,
            },
        })
        return bool((answer.get("status") or {}).get("allowed"))

    async def delete_job(self, namespace: str, name: str, propagation: str = "Background",
                         uid: str | None = None) -> bool:
        """Delete the Job and (by propagation) its pods; False if it was already gone, or (with
        `uid`, a precondition) if the Job of that name now is another one."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": propagation}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        try:
            await self._call("delete_job", "DELETE", _jobs(namespace, name), body=options)
            return True
        except KubernetesError as error:
            if error.status == 404 or (error.status == 409 and uid is not None):
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
            await self._call("patch_job", "PATCH", _jobs(namespace, name), body=patch, content_type=JSON_PATCH)

        await self._remove_finalizer(f"Job {name}", finalizer, read, write)

    async def remove_object_finalizer(self, plural: str, namespace: str, name: str, finalizer: str) -> None:
        """Take `finalizer` off one of the operator's own objects (a no-op if gone or absent).
        A merge patch on the version read, so a list that changed meanwhile is read again
        rather than overwritten."""
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
            await self._call(f"patch_{plural}", "PATCH", _custom(namespace, plural, name), body=body,
                             content_type=MERGE_PATCH)

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
        result = await self._call(f"list_{plural}", "GET", _custom(namespace, plural))
        return list(result.get("items") or [])

    async def list_jobs(self, namespace: str | None, label_selector: str) -> list[JobSnapshot]:
        """Jobs matching `label_selector` in `namespace`, or in every namespace (None)."""
        result = await self._call("list_jobs", "GET", _jobs(namespace), params={"labelSelector": label_selector})
        return [job_snapshot(job) for job in result.get("items") or []]

    async def list_pods(self, namespace: str, label_selector: str) -> list[PodSnapshot]:
        result = await self._call("list_pods", "GET", f"/api/v1/namespaces/{quote(namespace)}/pods",
                                  params={"labelSelector": label_selector})
        return [pod_snapshot(pod) for pod in result.get("items") or []]


def _jobs(namespace: str | None, name: str = "") -> str:
    where = f"/namespaces/{quote(namespace)}" if namespace is not None else ""
    return f"/apis/batch/v1{where}/jobs" + (f"/{quote(name)}" if name else "")


def controller_uid(metadata: Mapping[str, Any]) -> str | None:
    """The uid of an object's controller ownerReference (at most one is allowed)."""
    return next((str(ref.get("uid")) for ref in metadata.get("ownerReferences") or []
                 if isinstance(ref, dict) and ref.get("controller") is True), None)


def job_snapshot(job: Mapping[str, Any]) -> JobSnapshot:
    """What the operator reads from a Job (the JSON of a reply or a watch event): identity,
    bookkeeping, progress and how it ended."""
    metadata, spec, status = job.get("metadata") or {}, job.get("spec") or {}, job.get("status") or {}
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
        controller_uid=controller_uid(metadata),
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
        completions=_int_or(spec.get("completions"), 1),
        suspended=spec.get("suspend") is True,
        failed_indexes=str(status.get("failedIndexes") or ""),
    )


def pod_snapshot(pod: Mapping[str, Any]) -> PodSnapshot:
    """What the close of a run reads from one of its Job's pods (the JSON of a list reply)."""
    metadata, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    exits = []
    for container in containers:
        terminated = (container.get("state") or {}).get("terminated") or {}
        if terminated.get("exitCode"):
            exits.append(ContainerExit(container.get("name", ""), terminated["exitCode"],
                                       terminated.get("reason") or "Error"))
    images = tuple(ContainerImage(c.get("name", ""), c.get("image") or "", c.get("imageID") or "")
                   for c in containers)
    index = (metadata.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)
    return PodSnapshot(name=metadata.get("name", ""), controller_uid=controller_uid(metadata), failed_containers=tuple(exits),
                       node=spec.get("nodeName"), created=metadata.get("creationTimestamp"), containers=images,
                       completion_index=_int_or(index, None))


def _int_or(value: Any, default: int | None) -> Any:
    """A count or index from an API object, or `default` when it is missing or not a number."""
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default
