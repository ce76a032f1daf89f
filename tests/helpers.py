"""Small helpers for tests that wait on a live cluster and MLflow server."""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator, TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.25, message: str = "") -> T:
    """Call `probe` until it returns something truthy; fail with `message` after `timeout` seconds.

    Exceptions from the probe count as "not yet" until the deadline; the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - reported below if it never succeeds
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message or probe}{detail}")
        time.sleep(interval)


def stays(probe: Callable[[], bool], duration: float, interval: float = 0.25) -> bool:
    """True if `probe` holds for the whole `duration` (checked every `interval`)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not probe():
            return False
        time.sleep(interval)
    return True


GROUP, VERSION = "mlflow.operator.dev", "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"


class Objects:
    """Create, read, patch and wait on the operator's custom resources in one namespace."""

    def __init__(self, custom, namespace: str, plural: str, kind: str) -> None:
        self.custom, self.namespace, self.plural, self.kind = custom, namespace, plural, kind

    def create(self, name: str, spec: dict, labels: dict | None = None) -> dict:
        body = {"apiVersion": API_VERSION, "kind": self.kind,
                "metadata": {"name": name, "labels": labels or {}}, "spec": spec}
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, self.plural, body)

    def get(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, self.plural, name)

    def exists(self, name: str) -> bool:
        from kubernetes.client.exceptions import ApiException

        try:
            self.get(name)
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    def patch_spec(self, name: str, spec: dict) -> dict:
        return self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, self.plural, name, {"spec": spec}
        )

    def patch_status(self, name: str, status: dict) -> dict:
        return self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, self.plural, name, {"status": status}
        )

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, self.plural, name)

    def condition(self, name: str, type_: str = "Ready") -> dict | None:
        conditions = (self.get(name).get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == type_), None)

    def wait_ready(self, name: str, timeout: float = 60) -> dict:
        def ready():
            obj = self.get(name)
            status = obj.get("status") or {}
            if status.get("observedGeneration") != obj["metadata"]["generation"]:
                return None
            cond = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
            return obj if cond and cond["status"] == "True" else None

        return wait_for(ready, timeout=timeout, message=f"{self.kind} {name} to be Ready "
                        f"(last Ready condition: {self._last_ready(name)})")

    def wait_reason(self, name: str, reason: str, status: str = "False", timeout: float = 60) -> dict:
        def has_reason():
            cond = self.condition(name)
            return cond if cond and cond["reason"] == reason and cond["status"] == status else None

        return wait_for(has_reason, timeout=timeout, message=f"{self.kind} {name} Ready={status} reason {reason}")

    def _last_ready(self, name: str) -> str:
        try:
            return str(self.condition(name))
        except Exception as error:  # noqa: BLE001 - only for the failure message
            return repr(error)


def events_for(core, namespace: str, name: str, kind: str | None = None) -> list:
    """Events posted about the object `name` (of `kind`, if given: a TrainingRun and its Job
    share a name) in `namespace`, oldest first."""
    selector = f"involvedObject.name={name}" + (f",involvedObject.kind={kind}" if kind else "")
    items = core.list_namespaced_event(namespace, field_selector=selector).items
    return sorted(items, key=lambda e: (e.last_timestamp or e.event_time or e.metadata.creation_timestamp))


def event_reasons(core, namespace: str, name: str, kind: str | None = None) -> list[str]:
    return [e.reason for e in events_for(core, namespace, name, kind)]


def signed_by_operator(state, tracking_uri: str, entity: Any, entity_id: str, tags: dict) -> dict:
    """`tags` with the signature the sandbox's operator would give them (its key is in the
    sandbox's state): for a test that plays an entity the operator created earlier, e.g. for
    another object or namespace. A test can do this; a tenant cannot (docs/security.md)."""
    from pathlib import Path

    from mlflow_operator.logic import signing

    ring = signing.KeyRing.from_directory(Path(state) / "ownership-keys")
    return signing.signed(ring, tracking_uri, entity, entity_id, tags)


@contextlib.contextmanager
def outside_workspaces() -> Iterator[None]:
    """For MLflow clients of a server without workspaces (the sandbox's `mlflow-open` or basic-
    auth server): MLflow's client refuses to talk to one while a workspace is active (the
    `namespace` fixture makes the test's namespace the active one)."""
    import mlflow
    from mlflow.utils.workspace_context import get_request_workspace

    active = get_request_workspace()
    mlflow.set_workspace(None)
    try:
        yield
    finally:
        if active:
            mlflow.set_workspace(active)


# The chart's ClusterRole a namespace binds to its training ServiceAccount, so that its pods
# may log to the workspace server as themselves (examples/00-mlflow-access.yaml).
TRAINING_CLUSTER_ROLE = "mlflow-operator-training"


def bind_cluster_role(api_client, namespace: str, role: str, *service_accounts: str,
                      name: str = "mlflow-training") -> None:
    """A RoleBinding in `namespace` of the ClusterRole `role` to its ServiceAccounts: how a team
    lets its training pods (or a reader) use a workspace server."""
    from kubernetes import client

    client.RbacAuthorizationV1Api(api_client).create_namespaced_role_binding(namespace, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name=name),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=role),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=namespace)
                  for account in service_accounts],
    ))

