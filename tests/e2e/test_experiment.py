"""Experiment against the real API server and MLflow server: create, adopt, conflict,
update, rename, drift, deletion, outages, credentials and admission-time validation."""

from __future__ import annotations

import json
import os
import uuid

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import event_reasons, events_for, outside_workspaces, signed_by_operator, stays, wait_for

# Credentials Secrets are used only with their owner's consent (this label).
CREDENTIALS_LABEL = {"mlflow.operator.dev/credentials": "true"}

NOTE = "mlflow.note.content"
DRIFT_WAIT = 40  # the sandbox checks drift every 10 s


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def closed_port(sandbox) -> int:
    """An allowlisted server port that nothing listens on (the tenancy tests listen there only
    while they run)."""
    return sandbox.ports["test-server-2"]


def test_creates_the_experiment_with_tags_description_and_ownership(experiments, namespace, mlflow_client, core):
    experiments.create("churn", {"description": "Churn models", "tags": {"team": "ds"}})
    obj = experiments.wait_ready("churn")
    status = obj["status"]
    experiment = mlflow_client.get_experiment(status["experimentId"])
    # The default server keeps each namespace in its own workspace: no namespace prefix.
    assert experiment.name == "churn"
    assert experiment.tags["team"] == "ds"
    assert experiment.tags[NOTE] == "Churn models"
    assert experiment.tags["k8s.namespace"] == namespace
    assert experiment.tags["k8s.name"] == "churn"
    assert experiment.tags["k8s.kind"] == "Experiment"
    assert experiment.tags["k8s.uid"] == obj["metadata"]["uid"]
    assert status["experimentName"] == "churn"
    assert status["lifecycleStage"] == "active"
    assert status["url"].endswith(f"/#/experiments/{status['experimentId']}")
    assert "Created" in event_reasons(core, namespace, "churn")


def test_a_created_experiment_opens_in_the_uis_training_view_unless_the_spec_says_otherwise(
        experiments, mlflow_client):
    """MLflow 3's UI shows an experiment without mlflow.experimentKind as GenAI "Evaluation runs"."""
    experiments.create("training", {})
    experiments.create("genai", {"tags": {"mlflow.experimentKind": "genai_development"}})
    kinds = {name: mlflow_client.get_experiment(experiments.wait_ready(name)["status"]["experimentId"])
             .tags.get("mlflow.experimentKind") for name in ("training", "genai")}
    assert kinds == {"training": "custom_model_development", "genai": "genai_development"}


def test_status_holds_only_the_operators_fields_not_kopf_bookkeeping(experiments):
    experiments.create("tidy", {})
    status = experiments.wait_ready("tidy")["status"]
    assert set(status) <= {
        "observedGeneration", "conditions", "experimentId", "experimentName", "lifecycleStage",
        "artifactLocation", "url", "managedTags", "trackingUri",
    }
    assert {c["type"] for c in status["conditions"]} == {"Ready", "Reconciling", "Stalled"}


def test_a_spec_change_is_handled_without_kopf_keeping_a_copy_of_the_object(experiments, mlflow_client):
    experiments.create("light", {"description": "first"})
    experiments.wait_ready("light")
    experiments.patch_spec("light", {"description": "second"})
    status = wait_for(lambda: (s := experiments.get("light")["status"])["observedGeneration"] == 2 and s,
                      timeout=60, message="generation 2 observed")
    assert mlflow_client.get_experiment(status["experimentId"]).tags["mlflow.note.content"] == "second"
    annotations = experiments.get("light")["metadata"].get("annotations") or {}
    assert not [key for key in annotations if key.endswith("last-handled-configuration")]


def test_spec_name_overrides_the_default_name(experiments, mlflow_client):
    name = unique("custom-name")
    experiments.create("named", {"name": name})
    status = experiments.wait_ready("named")["status"]
    assert mlflow_client.get_experiment(status["experimentId"]).name == name


def test_adopts_an_experiment_created_outside_the_operator_with_spec_adopt(experiments, namespace, mlflow_client,
                                                                          core):
    name = unique("adopt")
    existing = mlflow_client.create_experiment(name, tags={"origin": "by-hand"})
    experiments.create("adopter", {"name": name, "tags": {"team": "ds"}, "adopt": True})
    status = experiments.wait_ready("adopter")["status"]
    assert status["experimentId"] == existing
    tags = mlflow_client.get_experiment(existing).tags
    assert tags["origin"] == "by-hand"
    assert tags["team"] == "ds"
    assert tags["k8s.name"] == "adopter"
    assert "Adopted" in event_reasons(core, namespace, "adopter")


def test_refuses_an_experiment_owned_by_another_object(experiments, mlflow_client, core, namespace, sandbox):
    name = unique("owned")
    existing = mlflow_client.create_experiment(name, tags=signed_by_operator(
        sandbox.state, sandbox.tracking_uri, "experiment-name", name,
        {"k8s.uid": "someone-else", "k8s.namespace": "other", "k8s.name": "x", "k8s.kind": "Experiment"}))
    experiments.create("intruder", {"name": name, "tags": {"team": "ds"}})
    condition = experiments.wait_reason("intruder", "Conflict")
    assert "other/x" in condition["message"]
    assert experiments.condition("intruder", "Stalled")["status"] == "True"
    assert "team" not in mlflow_client.get_experiment(existing).tags
    assert "Conflict" in event_reasons(core, namespace, "intruder")


def test_renames_the_experiment_when_spec_name_changes(experiments, mlflow_client):
    first, second = unique("first"), unique("second")
    experiments.create("renamed", {"name": first})
    experiment_id = experiments.wait_ready("renamed")["status"]["experimentId"]
    experiments.patch_spec("renamed", {"name": second})
    status = experiments.wait_ready("renamed")["status"]
    assert status["experimentId"] == experiment_id
    assert status["experimentName"] == second
    assert mlflow_client.get_experiment(experiment_id).name == second


def test_rename_onto_a_taken_name_is_a_name_conflict(experiments, mlflow_client):
    taken = unique("taken")
    mlflow_client.create_experiment(taken)
    experiments.create("mover", {"name": unique("mover")})
    experiments.wait_ready("mover")
    experiments.patch_spec("mover", {"name": taken})
    condition = experiments.wait_reason("mover", "NameConflict")
    assert taken in condition["message"]


def test_updates_description_and_tags_and_removes_only_its_own_tags(experiments, mlflow_client):
    experiments.create("tags", {"description": "v1", "tags": {"keep": "1", "drop": "1"}})
    experiment_id = experiments.wait_ready("tags")["status"]["experimentId"]
    mlflow_client.set_experiment_tag(experiment_id, "by-hand", "stays")
    experiments.patch_spec("tags", {"description": "v2", "tags": {"keep": "2", "drop": None, "new": "3"}})
    experiments.wait_ready("tags")
    tags = mlflow_client.get_experiment(experiment_id).tags
    assert tags[NOTE] == "v2"
    assert tags["keep"] == "2"
    assert tags["new"] == "3"
    assert "drop" not in tags
    assert tags["by-hand"] == "stays"


def test_removing_the_description_removes_the_note(experiments, mlflow_client, custom, namespace):
    experiments.create("note", {"description": "temporary"})
    experiment_id = experiments.wait_ready("note")["status"]["experimentId"]
    experiments.patch_spec("note", {"description": None})
    experiments.wait_ready("note")
    assert NOTE not in mlflow_client.get_experiment(experiment_id).tags


def test_drift_in_tags_note_and_name_is_reverted(experiments, mlflow_client, core, namespace):
    name = unique("drift")
    experiments.create("drift", {"name": name, "description": "declared", "tags": {"team": "ds"}})
    experiment_id = experiments.wait_ready("drift")["status"]["experimentId"]
    mlflow_client.set_experiment_tag(experiment_id, "team", "changed-by-hand")
    mlflow_client.set_experiment_tag(experiment_id, NOTE, "edited in the UI")
    mlflow_client.delete_experiment_tag(experiment_id, "k8s.uid")
    mlflow_client.rename_experiment(experiment_id, name + "-renamed")

    def reverted():
        experiment = mlflow_client.get_experiment(experiment_id)
        return (experiment.name == name and experiment.tags.get("team") == "ds"
                and experiment.tags.get(NOTE) == "declared" and "k8s.uid" in experiment.tags)

    wait_for(reverted, timeout=DRIFT_WAIT, message="drift to be reverted")
    wait_for(lambda: "DriftCorrected" in event_reasons(core, namespace, "drift"), timeout=10,
             message="a DriftCorrected event")


def test_an_experiment_deleted_by_hand_is_reported_not_recreated(experiments, mlflow_client, core, namespace):
    name = unique("gone")
    experiments.create("gone", {"name": name})
    experiment_id = experiments.wait_ready("gone")["status"]["experimentId"]
    mlflow_client.delete_experiment(experiment_id)
    condition = experiments.wait_reason("gone", "DeletedInMLflow", timeout=DRIFT_WAIT)
    assert experiment_id in condition["message"]
    # Events are posted after the status write, not with it.
    wait_for(lambda: "DeletedInMLflow" in event_reasons(core, namespace, "gone"), timeout=15,
             message="the DeletedInMLflow Event")
    experiment = mlflow_client.get_experiment_by_name(name)
    assert experiment.experiment_id == experiment_id and experiment.lifecycle_stage == "deleted"
    # Restoring it in MLflow heals the object at the next drift check.
    mlflow_client.restore_experiment(experiment_id)
    experiments.wait_ready("gone", timeout=DRIFT_WAIT)


def test_its_own_deleted_experiment_is_restored_when_status_was_lost(experiments, mlflow_client, core, namespace):
    name = unique("lost-status")
    experiments.create("lost", {"name": name})
    experiment_id = experiments.wait_ready("lost")["status"]["experimentId"]
    mlflow_client.delete_experiment(experiment_id)
    experiments.patch_status("lost", {"experimentId": None})
    experiments.patch_spec("lost", {"description": "trigger a reconcile"})
    status = experiments.wait_ready("lost")["status"]
    assert status["experimentId"] == experiment_id
    assert mlflow_client.get_experiment(experiment_id).lifecycle_stage == "active"
    assert "Restored" in event_reasons(core, namespace, "lost")


def test_a_deleted_experiment_of_the_same_name_not_ours_is_a_clear_condition(experiments, mlflow_client):
    name = unique("trash")
    mlflow_client.delete_experiment(mlflow_client.create_experiment(name))
    experiments.create("trash", {"name": name})
    condition = experiments.wait_reason("trash", "NameTakenByDeletedExperiment")
    assert "restore it" in condition["message"]


def test_deletion_policy_delete_soft_deletes_the_experiment(experiments, mlflow_client):
    experiments.create("doomed", {"deletionPolicy": "Delete"})
    experiment_id = experiments.wait_ready("doomed")["status"]["experimentId"]
    experiments.delete("doomed")
    wait_for(lambda: not experiments.exists("doomed"), timeout=30, message="object to be gone")
    assert mlflow_client.get_experiment(experiment_id).lifecycle_stage == "deleted"


def test_deletion_policy_retain_keeps_the_experiment(experiments, mlflow_client):
    experiments.create("kept", {})
    experiment_id = experiments.wait_ready("kept")["status"]["experimentId"]
    experiments.delete("kept")
    wait_for(lambda: not experiments.exists("kept"), timeout=30, message="object to be gone")
    assert mlflow_client.get_experiment(experiment_id).lifecycle_stage == "active"


def test_an_unreachable_server_is_tracking_unavailable_then_recovers(experiments, sandbox):
    experiments.create("offline", {"tracking": {"uri": f"http://127.0.0.1:{closed_port(sandbox)}"}})
    condition = experiments.wait_reason("offline", "TrackingUnavailable", timeout=60)
    assert experiments.condition("offline", "Reconciling")["status"] == "True"
    assert experiments.condition("offline", "Stalled")["status"] == "False"
    assert "will retry" in condition["message"]
    experiments.patch_spec("offline", {"tracking": {"uri": sandbox.tracking_uri}})
    experiments.wait_ready("offline")


def test_an_mlflow_outage_is_reported_and_healed_by_the_drift_check(experiments, sandbox):
    experiments.create("outage", {})
    experiments.wait_ready("outage")
    stopped = sandbox.sandbox("stop", "mlflow")
    assert stopped.returncode == 0, stopped.stderr
    try:
        experiments.wait_reason("outage", "TrackingUnavailable", timeout=DRIFT_WAIT + 30)
    finally:
        restarted = sandbox.sandbox("up")
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    experiments.wait_ready("outage", timeout=DRIFT_WAIT + 30)


def test_a_missing_secret_is_reported_and_resolves_once_created(experiments, core, namespace, sandbox):
    experiments.create("secured", {"tracking": {"uri": sandbox.open_tracking_uri, "secretRef": {"name": "mlflow-creds"}}})
    condition = experiments.wait_reason("secured", "SecretNotFound")
    assert "mlflow-creds" in condition["message"] and namespace in condition["message"]
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(labels=CREDENTIALS_LABEL, name="mlflow-creds"),
        string_data={"username": "alice", "password": "s3cr3t-value-42"},
    ))
    experiments.wait_ready("secured", timeout=DRIFT_WAIT + 30)


def test_a_secret_without_credential_keys_is_invalid_secret(experiments, core, namespace, sandbox):
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(labels=CREDENTIALS_LABEL, name="wrong-keys"), string_data={"user": "alice"},
    ))
    experiments.create("badsecret", {"tracking": {"uri": sandbox.open_tracking_uri, "secretRef": {"name": "wrong-keys"}}})
    condition = experiments.wait_reason("badsecret", "InvalidSecret")
    assert "username and password, or token" in condition["message"]


def test_secret_values_never_appear_in_status_events_or_logs(experiments, core, namespace, sandbox):
    secret_value = f"token-{uuid.uuid4().hex}"
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(labels=CREDENTIALS_LABEL, name="token-creds"), string_data={"token": secret_value},
    ))
    experiments.create("tokened", {"tracking": {"uri": f"http://127.0.0.1:{closed_port(sandbox)}",
                                                 "secretRef": {"name": "token-creds"}}})
    experiments.wait_reason("tokened", "TrackingUnavailable")
    experiments.patch_spec("tokened", {"tracking": {"uri": sandbox.open_tracking_uri}})
    obj = experiments.wait_ready("tokened")
    assert secret_value not in json.dumps(obj)
    assert all(secret_value not in (e.message or "") for e in events_for(core, namespace, "tokened"))
    assert secret_value not in (sandbox.state / "logs" / "operator.log").read_text()


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"tags": {"mlflow.runName": "x"}}, "reserved"),
        ({"tags": {"k8s.uid": "x"}}, "reserved"),
        ({"tags": {"bad*key": "x"}}, "tag keys must be"),
        ({"name": "x" * 501}, "Too long"),
        ({"name": " padded "}, "whitespace"),
        ({"deletionPolicy": "Purge"}, "Unsupported value"),
        ({"tracking": {"uri": "ftp://example.com"}}, "spec.tracking.uri"),
        ({"tracking": {"secretRef": {}}}, "spec.tracking.secretRef.name: Required value"),
        ({"artifactLocation": "runs:/abc/model"}, "cannot be a runs:/ URI"),
    ],
)
def test_invalid_specs_are_rejected_by_the_api_server(experiments, spec, expected):
    with pytest.raises(ApiException) as raised:
        experiments.create("invalid", spec)
    assert raised.value.status == 422
    assert expected in json.loads(raised.value.body)["message"]


def test_artifact_location_is_immutable(experiments, tmp_path):
    experiments.create("located", {"artifactLocation": "mlflow-artifacts:/custom/located"})
    with pytest.raises(ApiException) as raised:
        experiments.patch_spec("located", {"artifactLocation": "mlflow-artifacts:/custom/elsewhere"})
    assert "artifactLocation is immutable" in json.loads(raised.value.body)["message"]
    with pytest.raises(ApiException):
        experiments.patch_spec("located", {"artifactLocation": None})


def test_kubectl_get_shows_name_id_and_readiness(experiments, sandbox, namespace):
    experiments.create("columns", {})
    status = experiments.wait_ready("columns")["status"]
    out = sandbox.kubectl("get", "mlflow", "-n", namespace).stdout
    header = out.splitlines()[0].split()
    assert header[:6] == ["NAME", "MLFLOW", "NAME", "ID", "READY", "REASON"]
    row = next(line for line in out.splitlines() if "experiment.mlflow.operator.dev/columns" in line)
    assert status["experimentId"] in row.split() and "True" in row.split() and row.split()[1] == "columns"


def test_the_drift_check_leaves_a_healthy_experiment_alone(experiments, core, namespace):
    experiments.create("calm", {"tags": {"a": "b"}})
    experiments.wait_ready("calm")
    assert stays(lambda: "DriftCorrected" not in event_reasons(core, namespace, "calm"), duration=12, interval=1)


# --------------------------------------------------------------------------- a server that checks credentials


def basic_auth_secret(core, namespace: str, name: str, username: str, password: str) -> None:
    core.create_namespaced_secret(namespace, client.V1Secret(
        metadata=client.V1ObjectMeta(labels=CREDENTIALS_LABEL, name=name), string_data={"username": username, "password": password}))


def test_credentials_from_the_secret_authenticate_to_a_server_that_checks_them(experiments, core, namespace,
                                                                                sandbox):
    from mlflow import MlflowClient

    basic_auth_secret(core, namespace, "admin-creds", "admin", sandbox.auth_admin_password)
    experiments.create("authed", {"tracking": {"uri": sandbox.auth_tracking_uri,
                                               "secretRef": {"name": "admin-creds"}}})
    status = experiments.wait_ready("authed")["status"]
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = "admin", sandbox.auth_admin_password
    try:
        with outside_workspaces():
            experiment = MlflowClient(sandbox.auth_tracking_uri).get_experiment(status["experimentId"])
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    assert experiment.name == f"{namespace}/authed"
    assert status["url"].startswith(sandbox.auth_tracking_uri)


def test_refused_credentials_are_tracking_unauthorized_until_the_secret_is_fixed(experiments, core, namespace,
                                                                               sandbox):
    basic_auth_secret(core, namespace, "bad-creds", "admin", "not-the-password")
    experiments.create("refused", {"tracking": {"uri": sandbox.auth_tracking_uri,
                                                "secretRef": {"name": "bad-creds"}}})
    experiments.wait_reason("refused", "TrackingUnauthorized")
    assert experiments.condition("refused", "Stalled")["status"] == "True"
    core.patch_namespaced_secret("bad-creds", namespace, {"stringData": {"password": sandbox.auth_admin_password}})
    experiments.wait_ready("refused", timeout=DRIFT_WAIT)


def test_a_server_without_credentials_refuses_the_operators_defaults(experiments, sandbox):
    """An object that names another server never gets the operator's own credentials."""
    experiments.create("anonymous", {"tracking": {"uri": sandbox.auth_tracking_uri}})
    experiments.wait_reason("anonymous", "TrackingUnauthorized")
