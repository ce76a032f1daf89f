"""Distributed TrainingRuns: the Indexed Job and headless Service, the ranks' environment,
the nodes by phase, and a failure that names its rank."""

from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.api.trainingrun import TrainingRunSpec
from mlflow_operator.caches.jobs import HandledJobs
from mlflow_operator.cluster.snapshots import ContainerExit, JobSnapshot, PodSnapshot
from mlflow_operator.logic.queueing import queue_labels
from mlflow_operator.logic.trainingrun import (
    build_job,
    build_service,
    distributed_problems,
    index_set,
    job_outcome,
    node_counts,
    phase_of,
    pod_failure_reasons,
)

ME = ObjectIdentity(kind="TrainingRun", namespace="ml", name="ddp", uid="uid-1")


def spec(distributed: dict | None = None, env: list | None = None, restart_policy: str | None = None,
         **overrides) -> TrainingRunSpec:
    pod: dict = {"containers": [{"name": "train", "image": "img", "env": env or []}]}
    if restart_policy:
        pod["restartPolicy"] = restart_policy
    body = {"experimentName": "e", "template": {"spec": pod}, "backoffLimit": 2, **overrides}
    if distributed is not None:
        body["distributed"] = distributed
    return TrainingRunSpec.parse(body)


def job_of(run_spec: TrainingRunSpec, labels: dict | None = None) -> dict:
    return build_job(run_spec, ME, "run-1", "7", "http://mlflow:5000", None, labels)


def env_of(job: dict) -> dict[str, dict]:
    return {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_a_distributed_run_is_an_indexed_job_of_one_pod_per_node():
    job = job_of(spec({"nodes": 4}))
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 4


def test_each_rank_has_its_own_retries_and_one_rank_out_of_them_fails_the_job():
    job = job_of(spec({"nodes": 4}))
    assert job["spec"]["backoffLimitPerIndex"] == 2
    assert job["spec"]["maxFailedIndexes"] == 0
    assert "backoffLimit" not in job["spec"]


def test_ranks_restarted_in_place_share_the_jobs_backoff_limit():
    job = job_of(spec({"nodes": 2}, restart_policy="OnFailure"))
    assert job["spec"]["backoffLimit"] == 2 and "backoffLimitPerIndex" not in job["spec"]


def test_a_run_without_distributed_stays_a_single_pod_job():
    job = job_of(spec())
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    assert "MASTER_ADDR" not in env_of(job)
    assert build_service(spec(), ME) is None


def test_every_rank_finds_rank_zero_by_its_stable_name_in_the_service():
    job = job_of(spec({"nodes": 2, "port": 23456}))
    env = env_of(job)
    assert job["spec"]["template"]["spec"]["subdomain"] == "ddp"
    assert env["MASTER_ADDR"]["value"] == env["PET_MASTER_ADDR"]["value"] == "ddp-0.ddp"
    assert env["MASTER_PORT"]["value"] == env["PET_MASTER_PORT"]["value"] == "23456"


def test_the_node_rank_comes_from_the_completion_index():
    env = env_of(job_of(spec({"nodes": 2})))
    for name in ("NODE_RANK", "RANK", "PET_NODE_RANK"):
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["MLFLOW_SYSTEM_METRICS_NODE_ID"]["value"] == "node-$(NODE_RANK)"


def test_world_size_counts_every_process_of_every_node():
    env = env_of(job_of(spec({"nodes": 3, "processesPerNode": 4})))
    assert env["WORLD_SIZE"]["value"] == "12"
    assert env["PET_NNODES"]["value"] == "3" and env["PET_NPROC_PER_NODE"]["value"] == "4"


def test_every_rank_gets_the_one_runs_id():
    env = env_of(job_of(spec({"nodes": 2})))
    assert env["MLFLOW_RUN_ID"]["value"] == "run-1"


def test_the_service_is_headless_publishes_unready_ranks_and_is_owned_by_the_training_run():
    service = build_service(spec({"nodes": 2, "port": 23456}), ME)
    assert service is not None
    assert service["metadata"]["name"] == "ddp"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"] == {"mlflow.operator.dev/training-run": "ddp", "batch.kubernetes.io/job-name": "ddp"}
    assert service["spec"]["ports"][0]["port"] == 23456
    owner = service["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-1" and owner["controller"] is True


def test_template_env_that_the_operator_sets_for_ranks_is_a_problem():
    problems = distributed_problems(spec({"nodes": 2}, env=[{"name": "MASTER_PORT", "value": "1"},
                                                            {"name": "PET_NNODES", "value": "9"}]), "ddp")
    assert len(problems) == 2 and "MASTER_PORT" in problems[0] and "PET_NNODES" in problems[1]


def test_the_same_env_in_a_single_pod_run_is_the_templates_own():
    assert distributed_problems(spec(env=[{"name": "MASTER_PORT", "value": "1"}]), "ddp") == []


def test_a_name_whose_last_rank_would_exceed_63_characters_is_a_problem():
    assert distributed_problems(spec({"nodes": 11}), "a" * 61)  # a...a-10: 64
    assert not distributed_problems(spec({"nodes": 10}), "a" * 61)  # a...a-9: 63


def test_suspend_creates_the_job_suspended():
    assert job_of(spec({"nodes": 2}, suspend=True))["spec"]["suspend"] is True
    assert "suspend" not in job_of(spec())["spec"]


def test_queue_labels_travel_to_the_job_and_no_others():
    labels = queue_labels({"labels": {"kueue.x-k8s.io/queue-name": "team-a", "app.kubernetes.io/instance": "argo"}})
    job = job_of(spec({"nodes": 2}), labels)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "app.kubernetes.io/instance" not in job["metadata"]["labels"]


def test_a_queue_label_cannot_replace_the_operators_own_labels():
    job = job_of(spec(), {"mlflow.operator.dev/run-id": "forged"})
    assert job["metadata"]["labels"]["mlflow.operator.dev/run-id"] == "run-1"


def job(**kwargs) -> JobSnapshot:
    return JobSnapshot(uid="j", controller_uid="uid-1", completions=4, **kwargs)


def test_nodes_are_counted_by_phase_from_the_jobs_status():
    counts = node_counts(job(active=3, ready=2, succeeded=1))
    assert (counts.total, counts.running, counts.pending, counts.succeeded, counts.failed) == (4, 2, 1, 1, 0)
    assert counts.summary == "4 nodes: 2 running, 1 pending, 1 succeeded"


def test_after_a_failed_rank_the_ranks_the_job_stopped_are_counted_as_stopped():
    counts = node_counts(job(succeeded=1, failed=1, failed_indexes="2",
                             finished=("Failed", "MaxFailedIndexesExceeded", "")))
    assert (counts.failed, counts.running, counts.pending) == (1, 0, 0)
    assert counts.summary == "4 nodes: 1 succeeded, 1 failed, 2 stopped"


def test_index_lists_are_read_as_the_job_controller_writes_them():
    assert index_set("1,3-5") == {1, 3, 4, 5}
    assert index_set("") == set()
    assert len(index_set("0-999999999")) == 100_000


def test_a_suspended_job_with_no_pod_is_pending_even_after_it_ran():
    assert phase_of(job(suspended=True), previous_phase="Running") == "Pending"
    assert phase_of(job(suspended=False, ready=4)) == "Running"


def pod(name: str, index: int, code: int, created: str) -> PodSnapshot:
    return PodSnapshot(name=name, completion_index=index, created=created,
                       failed_containers=(ContainerExit("train", code, "Error"),))


def test_a_failure_names_the_rank_the_job_counted_as_failed_first():
    pods = [pod("ddp-0-a", 0, 143, "2026-01-01T00:00:01Z"), pod("ddp-1-b", 1, 3, "2026-01-01T00:00:02Z")]
    reasons = pod_failure_reasons(pods, failed_indexes="1")
    assert reasons[0] == "rank 1: pod ddp-1-b container train exited with code 3 (Error)"
    ended = job_outcome(job(finished=("Failed", "MaxFailedIndexesExceeded", "")), "ddp", reasons)
    assert "rank 1: pod ddp-1-b" in ended.message


def test_a_distributed_jobs_counts_are_part_of_what_a_reconcile_handled():
    before, after = job(active=4, ready=1), job(active=4, ready=2)
    assert HandledJobs.signature(before, "Running") != HandledJobs.signature(after, "Running")


def test_a_single_pod_jobs_counts_do_not_wake_a_reconcile():
    before = JobSnapshot(uid="j", controller_uid="u", active=1, ready=0)
    after = JobSnapshot(uid="j", controller_uid="u", active=1, ready=1)
    assert HandledJobs.signature(before, "Running") == HandledJobs.signature(after, "Running")
