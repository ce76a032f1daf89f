"""In-process stand-ins for the two gateways, for unit tests of reconcile logic that must
run in milliseconds: crash tests at every external write, which the sandbox can only show
one kill at a time. They implement the gateway methods the reconcilers call, with the same
snapshots and errors; the e2e suite keeps testing the real API server and MLflow server.

Every external write goes through `Writes.record`, which can crash the "operator" right
after the write landed (a BaseException, so no reconcile code can catch it).
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from mlflow_operator.cluster.snapshots import ContainerImage, JobSnapshot, PodSnapshot
from mlflow_operator.gateways.kubernetes import CredentialsSecret, KubernetesError
from mlflow_operator.logic.signing import KeyRing
from mlflow_operator.tracking.entities import (
    AlreadyExists,
    ExperimentInfo,
    LoggedModelInfo,
    ModelVersionInfo,
    RegisteredModelInfo,
    RunInfo,
    TrackingTarget,
)

# The ownership key unit tests sign with (the operator reads its own from a Secret).
TEST_KEYS = KeyRing.of({"test": b"t" * 32})


T = TypeVar("T")

class Crash(BaseException):
    """The operator process died right after an external write."""


@dataclass
class Writes:
    """Every external write, in order; `crash_at` (1-based) kills the operator after that one."""

    log: list[str] = field(default_factory=list)
    crash_at: int | None = None

    def record(self, what: str) -> None:
        self.log.append(what)
        if self.crash_at is not None and len(self.log) == self.crash_at:
            self.crash_at = None
            raise Crash(what)


def merge_patch(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386, as the API server applies a merge patch: None deletes, maps merge."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge_patch(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class FakeKube:
    """Custom objects with resourceVersions and status patches, and Jobs."""

    def __init__(self, writes: Writes) -> None:
        self.writes = writes
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.jobs: dict[tuple[str, str], JobSnapshot] = {}
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        # Pods by namespace, with the labels they carry (what the Job controller makes).
        self.pods: dict[str, list[tuple[dict[str, str], PodSnapshot]]] = {}
        self.jobs_created = 0
        # (namespace, ServiceAccount) with the training ClusterRole bound (workspace servers).
        self.bound_service_accounts: set[tuple[str, str]] = set()
        self.access_reviews = 0
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)

    def add_object(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        metadata = body.setdefault("metadata", {})
        metadata.setdefault("uid", f"{plural}-uid-{next(self._uids)}")
        metadata.setdefault("generation", 1)
        metadata["resourceVersion"] = str(next(self._versions))
        self.objects[(plural, metadata["namespace"], metadata["name"])] = body
        return body

    async def get_object(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((plural, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def annotate_object(self, plural: str, namespace: str, name: str, annotations: dict[str, str]) -> None:
        body = self.objects[(plural, namespace, name)]
        body["metadata"].setdefault("annotations", {}).update(annotations)
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.writes.record(f"annotate {plural}/{name}")

    async def create_object(self, plural: str, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        metadata = body["metadata"]
        if (plural, namespace, metadata["name"]) in self.objects:
            raise KubernetesError(409, "AlreadyExists", f"{plural} {metadata['name']} already exists")
        created = self.add_object(plural, copy.deepcopy({**body, "metadata": {**metadata, "namespace": namespace}}))
        self.writes.record(f"create_object {plural}/{metadata['name']}")
        return copy.deepcopy(created)

    async def list_objects(self, plural: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part)
        return [copy.deepcopy(o) for (p, ns, _), o in self.objects.items() if p == plural and ns == namespace
                and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())]

    async def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any],
                           resource_version: str | None = None) -> dict[str, Any]:
        body = self.objects.get((plural, namespace, name))
        if body is None:
            raise KubernetesError(404, "NotFound", f"{plural} {name} not found")
        if resource_version is not None and resource_version != body["metadata"]["resourceVersion"]:
            raise KubernetesError(409, "Conflict", "the object has been modified")
        body["status"] = merge_patch(body.get("status") or {}, status)
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.writes.record(f"patch_status {plural}/{name} {sorted(status)}")
        return copy.deepcopy(body)

    async def read_credentials_secret(self, namespace: str, name: str) -> CredentialsSecret | None:
        return None

    async def get_job(self, namespace: str, name: str) -> JobSnapshot | None:
        return self.jobs.get((namespace, name))

    async def service_account_may(self, namespace: str, service_account: str, group: str, resource: str,
                                  verb: str, name: str | None = None) -> bool:
        """RBAC as `bound_service_accounts` says: (namespace, ServiceAccount) pairs with the
        training ClusterRole bound."""
        self.access_reviews += 1
        return (namespace, service_account) in self.bound_service_accounts

    async def ensure_service(self, namespace: str, body: dict[str, Any]) -> str | None:
        metadata = body["metadata"]
        if (namespace, metadata["name"]) not in self.services:
            self.services[(namespace, metadata["name"])] = copy.deepcopy(body)
            self.writes.record(f"create_service {metadata['name']}")
        existing = self.services[(namespace, metadata["name"])]["metadata"]
        return next((ref["uid"] for ref in existing.get("ownerReferences") or [] if ref.get("controller")), None)

    async def create_job(self, namespace: str, body: dict[str, Any], dry_run: bool = False) -> JobSnapshot:
        metadata = body["metadata"]
        if (namespace, metadata["name"]) in self.jobs:
            raise KubernetesError(409, "AlreadyExists", f"jobs {metadata['name']} already exists")
        job = JobSnapshot(
            uid=f"job-uid-{next(self._uids)}", name=metadata["name"], namespace=namespace,
            controller_uid=next((ref["uid"] for ref in metadata.get("ownerReferences") or [] if ref.get("controller")), None),
            labels=dict(metadata.get("labels") or {}), finalizers=tuple(metadata.get("finalizers") or ()),
        )
        if dry_run:
            return job
        self.jobs[(namespace, job.name)] = job
        self.jobs_created += 1
        self.writes.record(f"create_job {job.name}")
        return job

    async def delete_job(self, namespace: str, name: str, propagation: str = "Background",
                         uid: str | None = None) -> bool:
        job = self.jobs.get((namespace, name))
        if job is None or (uid is not None and job.uid != uid):
            return False
        if job.finalizers:
            self.jobs[(namespace, name)] = replace(job, deleting=True)
        else:
            del self.jobs[(namespace, name)]
        self.writes.record(f"delete_job {name}")
        return True

    async def remove_job_finalizer(self, namespace: str, name: str, finalizer: str) -> None:
        job = self.jobs.get((namespace, name))
        if job is None or finalizer not in job.finalizers:
            return
        job = replace(job, finalizers=tuple(f for f in job.finalizers if f != finalizer))
        if job.deleting and not job.finalizers:
            del self.jobs[(namespace, name)]
        else:
            self.jobs[(namespace, name)] = job
        self.writes.record(f"remove_job_finalizer {name}")

    def close(self) -> None:
        """Nothing to close: no connections."""

    async def get_peering_status(self, namespace: str | None, name: str) -> dict[str, Any] | None:
        return None  # no peering object: the tests run one operator

    async def remove_object_finalizer(self, plural: str, namespace: str, name: str, finalizer: str) -> None:
        body = self.objects.get((plural, namespace, name))
        if body is None or finalizer not in (body["metadata"].get("finalizers") or []):
            return
        body["metadata"]["finalizers"] = [f for f in body["metadata"]["finalizers"] if f != finalizer]
        self.writes.record(f"remove_object_finalizer {plural}/{name}")

    async def list_objects_everywhere(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (p, ns, _), o in self.objects.items() if p == plural and namespace in (None, ns)]

    async def list_jobs(self, namespace: str | None, label_selector: str) -> list[JobSnapshot]:
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part and "=" in part)
        return [job for (ns, _), job in self.jobs.items() if namespace in (None, ns)
                and all(job.labels.get(key) == value for key, value in wanted.items())]

    async def list_pods(self, namespace: str, label_selector: str) -> list[PodSnapshot]:
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part)
        return [pod for labels, pod in self.pods.get(namespace, [])
                if all(labels.get(key) == value for key, value in wanted.items())]

    def run_pod(self, namespace: str, job_name: str, node: str = "node-1") -> None:
        """What the Job controller and the kubelet do for a Job: one pod, labelled with the
        Job's controller uid, its container started from the template's image."""
        job = self.jobs[(namespace, job_name)]
        labels = {"batch.kubernetes.io/controller-uid": job.uid, "job-name": job_name}
        pod = PodSnapshot(name=f"{job_name}-pod", controller_uid=job.uid, node=node,
                          containers=(ContainerImage("train", "churn-train:1", "churn-train@sha256:1"),))
        self.pods.setdefault(namespace, []).append((labels, pod))

    def finish_job(self, namespace: str, name: str) -> None:
        """What the Job controller does when the container exits 0."""
        job = self.jobs[(namespace, name)]
        self.jobs[(namespace, name)] = replace(job, succeeded=1, finished=("Complete", "", ""))


class FakeMlflow:
    """Experiments, runs, logged models and the registry of one tracking server."""

    def __init__(self, writes: Writes) -> None:
        self.writes = writes
        self.experiments: dict[str, ExperimentInfo] = {}
        self.runs: dict[str, RunInfo] = {}
        self.logged_models: list[LoggedModelInfo] = []
        self.models: dict[str, RegisteredModelInfo] = {}
        self.versions: dict[str, list[ModelVersionInfo]] = {}
        self._ids = itertools.count(1)
        self._clock = itertools.count(1_000)
        # Reads worth counting (searches), in order.
        self.calls: list[str] = []
        self.page_size = 1000
        self.versions_read = 0
        self.version_searches: list[str] = []
        # (run id, metric) -> (step, value) history, as training code logged it.
        self.histories: dict[tuple[str, str], list[tuple[int, float]]] = {}

    # ---- experiments

    def _page(self, found: list[T], page_token: str | None) -> tuple[list[T], str | None]:
        """One page of `page_size` and the token of the next (an offset), as MLflow pages."""
        start = int(page_token or 0)
        end = start + self.page_size
        return found[start:end], (str(end) if end < len(found) else None)

    async def get_experiment(self, target: TrackingTarget, experiment_id: str) -> ExperimentInfo | None:
        return self.experiments.get(experiment_id)

    async def search_experiments_page(self, target: TrackingTarget, filter_string: str,
                                      page_token: str | None) -> tuple[list[ExperimentInfo], str | None]:
        """Pages of `page_size`; only the namespace-tag filter the operator sends is understood."""
        self.calls.append("search_experiments")
        namespace = filter_string.split("=", 1)[1].strip().strip("'\"")
        return self._page([e for e in self.experiments.values() if e.tags.get("k8s.namespace") == namespace],
                          page_token)

    async def get_experiment_by_name(self, target: TrackingTarget, name: str) -> ExperimentInfo | None:
        return next((e for e in self.experiments.values() if e.name == name), None)

    async def create_experiment(self, target: TrackingTarget, name: str, artifact_location: str | None,
                                tags: dict[str, str]) -> str:
        if await self.get_experiment_by_name(target, name):
            raise AlreadyExists(f"experiment {name!r} exists")
        experiment_id = str(next(self._ids))
        self.experiments[experiment_id] = ExperimentInfo(experiment_id, name, "active", artifact_location, dict(tags))
        self.writes.record(f"create_experiment {name}")
        return experiment_id

    async def delete_experiment(self, target: TrackingTarget, experiment_id: str) -> None:
        self.experiments[experiment_id] = replace(self.experiments[experiment_id], lifecycle_stage="deleted")
        self.writes.record(f"delete_experiment {experiment_id}")

    async def set_experiment_tag(self, target: TrackingTarget, experiment_id: str, key: str, value: str) -> None:
        experiment = self.experiments[experiment_id]
        self.experiments[experiment_id] = replace(experiment, tags={**experiment.tags, key: value})
        self.writes.record(f"set_experiment_tag {key}")

    # ---- runs

    async def find_runs_by_tag(self, target: TrackingTarget, experiment_id: str, key: str,
                               value: str) -> list[RunInfo]:
        self.calls.append("find_runs_by_tag")
        found = [r for r in self.runs.values() if r.experiment_id == experiment_id and r.tags.get(key) == value]
        return sorted(found, key=lambda r: r.start_time or 0)

    async def get_run(self, target: TrackingTarget, run_id: str) -> RunInfo | None:
        return self.runs.get(run_id)

    async def metric_history(self, target: TrackingTarget, run_id: str, key: str) -> list[tuple[int, float]]:
        self.calls.append("metric_history")
        return list(self.histories.get((run_id, key), []))

    async def create_run(self, target: TrackingTarget, experiment_id: str, run_name: str, tags: dict[str, str],
                         start_time_ms: int) -> RunInfo:
        run = RunInfo(f"run{next(self._ids)}", experiment_id, run_name, "RUNNING", "active",
                      next(self._clock), None, dict(tags))
        self.runs[run.run_id] = run
        self.writes.record("create_run")
        return run

    async def log_params_and_tags(self, target: TrackingTarget, run_id: str, params: dict[str, str],
                                  tags: dict[str, str], metrics: dict[str, float] | None = None) -> None:
        run = self.runs[run_id]
        self.runs[run_id] = replace(run, params={**run.params, **params}, tags={**run.tags, **tags},
                                    metrics={**run.metrics, **(metrics or {})})
        self.writes.record("log_params_and_tags")

    async def set_run_tag(self, target: TrackingTarget, run_id: str, key: str, value: str) -> None:
        run = self.runs[run_id]
        self.runs[run_id] = replace(run, tags={**run.tags, key: value})
        self.writes.record(f"set_run_tag {key}")

    async def set_run_status(self, target: TrackingTarget, run_id: str, status: str, end_time_ms: int | None,
                             run_name: str | None = None) -> None:
        self.runs[run_id] = replace(self.runs[run_id], status=status, end_time=end_time_ms)
        self.writes.record(f"set_run_status {status}")

    async def delete_run(self, target: TrackingTarget, run_id: str) -> None:
        self.runs[run_id] = replace(self.runs[run_id], lifecycle_stage="deleted")
        self.writes.record("delete_run")

    async def logged_models_of_run(self, target: TrackingTarget, experiment_id: str,
                                   run_id: str) -> list[LoggedModelInfo]:
        return [m for m in self.logged_models if m.source_run_id == run_id]

    def container_logs_model(self, run_id: str, name: str = "model") -> None:
        """What the training container does: log a model, end the run it resumed FINISHED."""
        self.logged_models.append(LoggedModelInfo(f"m-{next(self._ids)}", name, run_id, "READY", next(self._clock)))
        self.runs[run_id] = replace(self.runs[run_id], status="FINISHED", end_time=next(self._clock))

    # ---- registry

    async def get_registered_model(self, target: TrackingTarget, name: str) -> RegisteredModelInfo | None:
        return self.models.get(name)

    async def create_registered_model(self, target: TrackingTarget, name: str, tags: dict[str, str],
                                      description: str | None) -> RegisteredModelInfo:
        if name in self.models:
            raise AlreadyExists(f"registered model {name!r} exists")
        self.models[name] = RegisteredModelInfo(name, description or "", dict(tags))
        self.versions[name] = []
        self.writes.record(f"create_registered_model {name}")
        return self.models[name]

    async def delete_registered_model(self, target: TrackingTarget, name: str) -> None:
        self.models.pop(name, None)
        self.versions.pop(name, None)
        self.writes.record(f"delete_registered_model {name}")

    async def set_registered_model_tag(self, target: TrackingTarget, name: str, key: str, value: str) -> None:
        model = self.models[name]
        self.models[name] = replace(model, tags={**model.tags, key: value})
        self.writes.record(f"set_registered_model_tag {key}")

    async def update_registered_model_description(self, target: TrackingTarget, name: str, description: str) -> None:
        self.models[name] = replace(self.models[name], description=description)
        self.writes.record("update_registered_model_description")

    async def model_versions(self, target: TrackingTarget, name: str) -> list[ModelVersionInfo]:
        self.calls.append("model_versions")
        return list(self.versions.get(name, []))

    async def search_registered_models_page(self, target: TrackingTarget, filter_string: str,
                                            page_token: str | None) -> tuple[list[RegisteredModelInfo], str | None]:
        """Pages of `page_size`; only the namespace-tag filter the operator sends is understood."""
        self.calls.append("search_registered_models")
        namespace = filter_string.split("=", 1)[1].strip().strip("'\"")
        return self._page([m for m in self.models.values() if m.tags.get("k8s.namespace") == namespace],
                          page_token)

    async def search_model_versions_page(
        self, target: TrackingTarget, filter_string: str, page_token: str | None,
        order_by: str | None = None, max_results: int = 200_000,
    ) -> tuple[list[ModelVersionInfo], str | None]:
        """The versions of the models a `name IN (...)` filter names, perhaps `AND
        version_number = N`; newest update first if ordered by it; pages of `max_results`."""
        self.calls.append("search_model_versions")
        self.version_searches.append(filter_string if order_by is None else f"{filter_string} ORDER BY {order_by}")
        names_filter, _, number = filter_string.partition(" AND version_number = ")
        listed = names_filter.removeprefix("name IN (").removesuffix(")")
        names = {literal.strip()[1:-1] for literal in listed.split(", ")}
        found = [v for name in sorted(names) for v in self.versions.get(name, []) if not number or v.version == number]
        if order_by == "last_updated_timestamp DESC":
            found.sort(key=lambda v: v.last_updated or 0, reverse=True)
        start = int(page_token or 0)
        end = start + max_results
        self.versions_read += len(found[start:end])
        return found[start:end], (str(end) if end < len(found) else None)

    async def create_model_version(self, target: TrackingTarget, name: str, source: str, run_id: str | None,
                                   model_id: str | None, tags: dict[str, str],
                                   description: str | None = None) -> ModelVersionInfo:
        version = ModelVersionInfo(name, str(len(self.versions[name]) + 1), "None", description or "", source,
                                   run_id, "READY", tags=dict(tags))
        self.versions[name].append(version)
        self.writes.record(f"create_model_version {name}")
        return version

    async def set_alias(self, target: TrackingTarget, name: str, alias: str, version: str) -> None:
        model = self.models[name]
        self.models[name] = replace(model, aliases={**model.aliases, alias: version})
        self.writes.record(f"set_alias {alias}")

    async def set_model_version_tag(self, target: TrackingTarget, name: str, version: str, key: str,
                                    value: str) -> None:
        self.versions[name] = [replace(v, tags={**v.tags, key: value}) if v.version == version else v
                               for v in self.versions[name]]
        self.writes.record(f"set_model_version_tag {key}")

    def close(self) -> None:
        """Nothing to close: no connections."""

    async def rename_experiment(self, target: TrackingTarget, experiment_id: str, new_name: str) -> None:
        self.experiments[experiment_id] = replace(self.experiments[experiment_id], name=new_name)
        self.writes.record(f"rename_experiment {new_name}")

    async def delete_experiment_tag(self, target: TrackingTarget, experiment_id: str, key: str) -> None:
        experiment = self.experiments[experiment_id]
        self.experiments[experiment_id] = replace(experiment, tags={k: v for k, v in experiment.tags.items() if k != key})
        self.writes.record(f"delete_experiment_tag {key}")

    async def restore_experiment(self, target: TrackingTarget, experiment_id: str) -> None:
        self.experiments[experiment_id] = replace(self.experiments[experiment_id], lifecycle_stage="active")
        self.writes.record(f"restore_experiment {experiment_id}")

    async def delete_registered_model_tag(self, target: TrackingTarget, name: str, key: str) -> None:
        model = self.models[name]
        self.models[name] = replace(model, tags={k: v for k, v in model.tags.items() if k != key})
        self.writes.record(f"delete_registered_model_tag {key}")

    async def delete_alias(self, target: TrackingTarget, name: str, alias: str) -> None:
        model = self.models[name]
        self.models[name] = replace(model, aliases={k: v for k, v in model.aliases.items() if k != alias})
        self.writes.record(f"delete_alias {alias}")

    def _edit_version(self, name: str, version: str, **changes: Any) -> None:
        self.versions[name] = [replace(v, **changes) if v.version == version else v for v in self.versions[name]]

    async def update_model_version_description(self, target: TrackingTarget, name: str, version: str,
                                               description: str) -> None:
        self._edit_version(name, version, description=description)
        self.writes.record(f"update_model_version_description {name}/{version}")

    async def transition_stage(self, target: TrackingTarget, name: str, version: str, stage: str,
                               archive_existing: bool) -> None:
        if archive_existing:
            for other in self.versions[name]:
                if other.version != version and other.stage == stage:
                    self._edit_version(name, other.version, stage="Archived")
        self._edit_version(name, version, stage=stage)
        self.writes.record(f"transition_stage {name}/{version} {stage}")

    async def delete_model_version_tag(self, target: TrackingTarget, name: str, version: str, key: str) -> None:
        self.versions[name] = [replace(v, tags={k: val for k, val in v.tags.items() if k != key})
                               if v.version == version else v for v in self.versions[name]]
        self.writes.record(f"delete_model_version_tag {key}")
