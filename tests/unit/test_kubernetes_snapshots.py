"""The Kubernetes gateway reads the API server's JSON into plain snapshots. The JSON here is
what the official client's models serialize to, i.e. what the API server sends."""

import datetime as dt

from kubernetes import client

from mlflow_operator.cluster.snapshots import ContainerExit
from mlflow_operator.gateways.kubernetes import job_snapshot, pod_snapshot

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
T1 = T0 + dt.timedelta(minutes=5)


def as_json(model):
    return client.ApiClient().sanitize_for_serialization(model)


def v1_job(conditions=None, deleting=False, **status) -> client.V1Job:
    return client.V1Job(
        metadata=client.V1ObjectMeta(
            name="train", namespace="team-a", uid="job-uid", labels={"mlflow.operator.dev/run-id": "r1"},
            finalizers=["mlflow.operator.dev/job-outcome"], deletion_timestamp=T1 if deleting else None,
            owner_references=[client.V1OwnerReference(api_version="v1", kind="TrainingRun", name="train",
                                                      uid="owner-uid", controller=True),
                              client.V1OwnerReference(api_version="v1", kind="TrainingRun", name="other",
                                                      uid="another-uid")]),
        status=client.V1JobStatus(conditions=conditions, start_time=T0, **status),
    )


def test_a_running_job_reads_as_active_and_not_ended():
    job = job_snapshot(as_json(v1_job(active=1, ready=1)))
    assert (job.uid, job.name, job.namespace, job.active, job.ready) == ("job-uid", "train", "team-a", 1, 1)
    assert job.controlled_by("owner-uid") and not job.controlled_by("another-uid")
    assert job.labels == {"mlflow.operator.dev/run-id": "r1"}
    assert job.finalizers == ("mlflow.operator.dev/job-outcome",)
    assert not job.ended and job.start_time == T0


def test_a_failed_job_ends_when_its_failed_condition_turned_true():
    failed = client.V1JobCondition(type="Failed", status="True", reason="BackoffLimitExceeded",
                                   message="Job has reached the specified backoff limit", last_transition_time=T1)
    job = job_snapshot(as_json(v1_job(conditions=[failed], failed=1)))
    assert job.ended and job.finished == ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
    assert job.completion_time == T1


def test_a_job_being_deleted_has_ended():
    assert job_snapshot(as_json(v1_job(deleting=True, active=1))).ended


def test_a_pod_lists_only_the_containers_that_failed():
    def status(name: str, code: int, reason: str | None) -> client.V1ContainerStatus:
        return client.V1ContainerStatus(
            name=name, image="i", image_id="", ready=False, restart_count=0,
            state=client.V1ContainerState(terminated=client.V1ContainerStateTerminated(exit_code=code, reason=reason)))

    pod = client.V1Pod(metadata=client.V1ObjectMeta(name="train-x"), status=client.V1PodStatus(
        container_statuses=[status("ok", 0, "Completed"), status("train", 137, "OOMKilled"), status("side", 3, None)]))
    assert pod_snapshot(as_json(pod)).failed_containers == (ContainerExit("train", 137, "OOMKilled"),
                                                   ContainerExit("side", 3, "Error"))
