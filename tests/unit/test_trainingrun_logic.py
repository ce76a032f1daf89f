"""TrainingRun decisions: the Job we build, how a Job's state reads, which run is ours."""

import pytest

from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.api.trainingrun import TrainingRunSpec, TrainingRunStatus
from mlflow_operator.cluster.snapshots import JobSnapshot
from mlflow_operator.logic.conditions import ReconcileProblem
from mlflow_operator.logic.trainingrun import (
    JOB_FINALIZER,
    CredentialSource,
    build_job,
    canonical_run,
    final_run_status,
    job_outcome,
    job_shape,
    param_env,
    param_env_name,
    phase_of,
    pick_logged_model,
    primary_metric_text,
    stage_of,
)
from mlflow_operator.tracking.entities import LoggedModelInfo, RunInfo
from mlflow_operator.tracking.servers import Credentials

ME = ObjectIdentity(kind="TrainingRun", namespace="ml", name="churn-1", uid="uid-1")


def spec(**overrides) -> TrainingRunSpec:
    body = {"experimentName": "e", "template": {"spec": {"containers": [
        {"name": "train", "image": "img", "env": [{"name": "MLFLOW_RUN_ID", "value": "spoofed"},
                                                   {"name": "OWN", "value": "$(MLFLOW_PARAM_LR)"}]}]}}}
    body.update(overrides)
    return TrainingRunSpec.parse(body)


def test_param_keys_become_upper_case_env_names():
    assert param_env_name("learning-rate") == "MLFLOW_PARAM_LEARNING_RATE"
    assert param_env_name("n.estimators") == "MLFLOW_PARAM_N_ESTIMATORS"
    assert param_env_name("batch size") == "MLFLOW_PARAM_BATCH_SIZE"


def test_colliding_param_env_names_are_refused():
    with pytest.raises(ReconcileProblem) as raised:
        param_env({"a-b": "1", "A_B": "2"})
    assert raised.value.outcome.reason == "InvalidSpec"


def test_exactly_one_experiment_source_is_required():
    with pytest.raises(ValueError):
        TrainingRunSpec.parse({"template": {}})
    with pytest.raises(ValueError):
        TrainingRunSpec.parse({"template": {}, "experimentName": "a", "experimentRef": {"name": "b"}})


def test_the_job_is_named_labelled_and_owned_after_the_training_run():
    job = build_job(spec(), ME, "run-1", "7", "http://mlflow:5000", None)
    assert job["metadata"]["name"] == "churn-1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["metadata"]["ownerReferences"][0]["controller"] is True
    assert job["spec"]["template"]["metadata"]["labels"]["mlflow.operator.dev/run-id"] == "run-1"
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 0


def test_operator_env_comes_first_and_replaces_the_templates_own_entries():
    job = build_job(spec(params={"lr": "0.1"}), ME, "run-1", "7", "http://mlflow:5000", None)
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert names[:4] == ["MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_RUN_ID", "MLFLOW_DISABLE_TELEMETRY"]
    assert names.count("MLFLOW_RUN_ID") == 1
    assert {e["name"]: e.get("value") for e in env}["MLFLOW_RUN_ID"] == "run-1"
    assert names.index("MLFLOW_PARAM_LR") < names.index("OWN")


def test_credentials_are_secret_key_refs_never_values():
    source = CredentialSource.for_secret("creds", Credentials(username="u", password="very-secret"))
    job = build_job(spec(), ME, "run-1", "7", "http://mlflow:5000", source)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"] == {
        "name": "MLFLOW_TRACKING_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}}
    assert "very-secret" not in repr(job)
    token_source = CredentialSource.for_secret("creds", Credentials(token="t"))
    assert token_source.keys == (("MLFLOW_TRACKING_TOKEN", "token"),)


def state(**kwargs) -> JobSnapshot:
    return JobSnapshot(uid="j", controller_uid="uid-1", **kwargs)


def shape(run_spec: TrainingRunSpec, namespace: str = "ml", experiment_id: str = "1") -> str:
    return job_shape(run_spec, namespace, experiment_id, "http://mlflow:5000", None)


def test_runs_of_one_template_that_differ_in_param_values_have_one_job_shape():
    assert shape(spec(params={"lr": "0.1"})) == shape(spec(params={"lr": "0.2"}))


def test_a_different_template_param_name_namespace_or_experiment_is_another_job_shape():
    base = shape(spec(params={"lr": "0.1"}))
    assert shape(spec(params={"lr": "0.1"}, backoffLimit=2)) != base
    assert shape(spec(params={"rate": "0.1"})) != base
    assert shape(spec(params={"lr": "0.1"}), namespace="other") != base
    assert shape(spec(params={"lr": "0.1"}), experiment_id="2") != base
    other_image = spec(params={"lr": "0.1"}, template={"spec": {"containers": [{"name": "train", "image": "x"}]}})
    assert shape(other_image) != base


def test_job_phases():
    assert phase_of(state()) == "Pending"
    assert phase_of(state(active=1, ready=1)) == "Running"
    assert phase_of(state(active=0), previous_phase="Running") == "Running"  # between pod end and Complete
    assert phase_of(state(finished=("Complete", "", ""))) == "Succeeded"
    assert phase_of(state(finished=("Failed", "BackoffLimitExceeded", ""))) == "Failed"


def test_the_run_status_comes_from_the_job_outcome():
    assert final_run_status("Succeeded") == "FINISHED"
    assert final_run_status("Failed") == "FAILED"
    assert final_run_status("Failed", "JobDeleted") == "KILLED"


def test_the_job_carries_the_finalizer_that_keeps_its_outcome():
    job = build_job(spec(), ME, "r1", "7", "http://m", None)
    assert job["metadata"]["finalizers"] == [JOB_FINALIZER]


def test_a_finished_job_that_is_being_deleted_keeps_its_outcome():
    ended = job_outcome(state(finished=("Complete", "", ""), deleting=True), "churn-1", [])
    assert (ended.phase, ended.reason) == ("Succeeded", "Succeeded")
    assert state(finished=("Complete", "", ""), deleting=True).ended


def test_a_job_deleted_before_it_finished_cut_the_run_short():
    ended = job_outcome(state(active=1, deleting=True), "churn-1", [])
    assert (ended.phase, ended.reason) == ("Failed", "JobDeleted")
    assert final_run_status(ended.phase, ended.reason) == "KILLED"


def test_a_failed_job_names_the_failing_pod():
    ended = job_outcome(state(finished=("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff")),
                        "churn-1", ["pod churn-1-abc container train exited with code 3 (Error)"])
    assert ended.reason == "BackoffLimitExceeded" and "exited with code 3" in ended.message


def run(run_id: str, start: int, stage: str = "active") -> RunInfo:
    return RunInfo(run_id, "7", "r", "RUNNING", stage, start, None)


def test_the_oldest_active_run_is_ours_and_the_rest_duplicates():
    ours, duplicates = canonical_run([run("b", 20), run("a", 10), run("c", 5, stage="deleted")])
    assert ours is not None and ours.run_id == "a"
    assert [d.run_id for d in duplicates] == ["b"]
    assert canonical_run([run("c", 5, stage="deleted")]) == (None, [])


def test_the_run_a_job_was_started_for_wins_over_an_older_one():
    ours, duplicates = canonical_run([run("old", 1), run("in-job", 2)], in_job="in-job")
    assert ours is not None and ours.run_id == "in-job" and [d.run_id for d in duplicates] == ["old"]


def test_the_logged_model_is_picked_by_name_newest_first():
    models = [LoggedModelInfo("m-1", "model", "r", "READY", 1), LoggedModelInfo("m-2", "model", "r", "READY", 2),
              LoggedModelInfo("m-3", "other", "r", "READY", 3)]
    picked = pick_logged_model(models, "model")
    assert picked is not None and picked.model_id == "m-2"
    assert pick_logged_model(models, "missing") is None


def test_primary_metric_text():
    assert primary_metric_text({"acc": 0.91234567}, "acc") == "acc=0.912346"
    assert primary_metric_text({"acc": 1.0}, "loss") is None
    assert primary_metric_text({}, None) is None


# --------------------------------------------------------------------------- stages


def stage(status: dict, job: JobSnapshot | None, registers_model: bool) -> str:
    """The stage of a TrainingRun whose stored status is `status`."""
    return stage_of(TrainingRunStatus.model_validate(status), job, registers_model)


def test_a_run_not_started_is_starting_whatever_job_has_the_name():
    assert stage({}, None, registers_model=False) == "starting"
    assert stage({}, state(), registers_model=False) == "starting"


def test_a_recorded_run_whose_job_is_gone_or_another_has_lost_its_job():
    assert stage({"runId": "r", "jobUid": "old"}, state(), registers_model=False) == "job_lost"
    assert stage({"runId": "r", "jobUid": "old"}, None, registers_model=False) == "job_lost"


def test_a_recorded_run_whose_job_is_not_recorded_yet_is_starting():
    assert stage({"runId": "r"}, state(), registers_model=False) == "starting"


def test_a_recorded_run_with_its_job_follows_the_job():
    status = {"runId": "r", "jobUid": "j"}
    assert stage(status, state(active=1), registers_model=False) == "job_running"
    assert stage(status, state(finished=("Complete", "", "")), registers_model=False) == "job_ended"
    assert stage(status, state(deleting=True), registers_model=False) == "job_ended"


def test_a_recorded_outcome_is_closing_with_or_without_the_job():
    status = {"runId": "r", "jobUid": "j", "jobOutcome": {"phase": "Succeeded"}}
    assert stage(status, None, registers_model=False) == "closing"
    assert stage(status, state(finished=("Complete", "", "")), registers_model=False) == "closing"


def test_a_succeeded_run_is_closed_only_once_its_model_is_registered():
    status = {"runId": "r", "phase": "Succeeded", "runStatus": "FINISHED"}
    assert stage(status, None, registers_model=False) == "closed"
    assert stage(status, None, registers_model=True) == "closing"
    assert stage({**status, "modelVersion": {"version": "1"}}, None, registers_model=True) == "closed"


def test_a_failed_run_is_closed_once_its_run_status_is_written():
    assert stage({"runId": "r", "phase": "Failed"}, None, registers_model=True) == "closing"
    assert stage({"runId": "r", "phase": "Failed", "runStatus": "FAILED"}, None, registers_model=True) == "closed"
