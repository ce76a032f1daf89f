"""RegisteredModel against the real API server and MLflow registry: create, adopt, aliases
(the promotion workflow), stages, per-version settings, VersionNotFound, drift under
Enforce and Observe, the status mirror, deletion and admission-time validation."""

from __future__ import annotations

import json
import sys
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from helpers import Objects, event_reasons, events_for, signed_by_operator, wait_for
from play_training import play

DRIFT_WAIT = 40
TRAINER = [sys.executable, "-W", "ignore", str(Path(__file__).parent / "trainers" / "log_model.py")]
# MLflow deprecates stages; the operator still supports them, so the tests use them.
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def unique(prefix: str = "model") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


SANDBOX: Any = None  # the session's sandbox, set for every test: its key signs as the operator


def namespace_owned(name: str, namespace: str) -> dict[str, str]:
    """The tags a TrainingRun of `namespace` gives a model it creates (signed by the operator)."""
    return signed_by_operator(SANDBOX.state, SANDBOX.tracking_uri, "registered-model", name,
                              {"k8s.namespace": namespace})


@pytest.fixture(autouse=True)
def _sandbox_for_signing(sandbox):
    global SANDBOX
    SANDBOX = sandbox


def add_versions(mlflow_client, name: str, count: int, namespace: str) -> list[str]:
    """Register `count` versions by hand, as a TrainingRun of `namespace` would (the model
    then belongs to that namespace, so a RegisteredModel there takes it over)."""
    if mlflow_client.search_registered_models(filter_string=f"name = '{name}'") == []:
        mlflow_client.create_registered_model(name, tags=namespace_owned(name, namespace))
    return [mlflow_client.create_model_version(name, source=f"s3://bucket/{name}/{i}", run_id=None).version
            for i in range(count)]


def alias_target(mlflow_client, name: str, alias: str) -> str | None:
    return mlflow_client.get_registered_model(name).aliases.get(alias)


def test_creates_the_model_with_description_tags_and_ownership(models, mlflow_client, namespace, core):
    name = unique()
    obj = models.create("clf", {"name": name, "description": "The churn classifier", "tags": {"team": "ds"}})
    status = models.wait_ready("clf")["status"]
    model = mlflow_client.get_registered_model(name)
    assert model.description == "The churn classifier"
    assert model.tags["team"] == "ds"
    assert model.tags["k8s.uid"] == obj["metadata"]["uid"] and model.tags["k8s.kind"] == "RegisteredModel"
    assert status["modelName"] == name and status["versionCount"] == 0
    assert status["url"].endswith(f"/#/models/{name}")
    assert "Created" in event_reasons(core, namespace, "clf")


def test_the_default_name_is_metadata_name(models, mlflow_client, namespace):
    name = unique("default")
    models.create(name, {})
    assert models.wait_ready(name)["status"]["modelName"] == name
    assert mlflow_client.get_registered_model(name).tags["k8s.namespace"] == namespace


def test_adopts_a_model_a_training_run_of_this_namespace_created(models, mlflow_client, namespace):
    name = unique()
    mlflow_client.create_registered_model(name, tags=signed_by_operator(
        SANDBOX.state, SANDBOX.tracking_uri, "registered-model", name, {"k8s.createdBy": f"TrainingRun {namespace}/x"}))
    add_versions(mlflow_client, name, 2, namespace)
    models.create("adopter", {"name": name, "aliases": {"champion": "2"}})
    status = models.wait_ready("adopter")["status"]
    assert status["versionCount"] == 2
    assert alias_target(mlflow_client, name, "champion") == "2"


def test_refuses_a_model_owned_by_another_object(models, mlflow_client):
    name = unique()
    mlflow_client.create_registered_model(name, tags=signed_by_operator(
        SANDBOX.state, SANDBOX.tracking_uri, "registered-model", name,
        {"k8s.uid": "other", "k8s.namespace": "elsewhere", "k8s.name": "theirs", "k8s.kind": "RegisteredModel"}))
    models.create("intruder", {"name": name, "description": "mine now?"})
    condition = models.wait_reason("intruder", "Conflict")
    assert "elsewhere/theirs" in condition["message"]
    assert mlflow_client.get_registered_model(name).description in ("", None)


def test_promotion_moves_the_alias_when_the_spec_changes(models, mlflow_client, core, namespace):
    """The headline workflow: a pull request changes aliases.champion from 3 to 4."""
    name = unique()
    add_versions(mlflow_client, name, 4, namespace)
    models.create("promo", {"name": name, "aliases": {"champion": 3, "challenger": "4"}})
    models.wait_ready("promo")
    assert alias_target(mlflow_client, name, "champion") == "3"
    assert alias_target(mlflow_client, name, "challenger") == "4"
    models.patch_spec("promo", {"aliases": {"champion": "4", "challenger": None}})
    status = models.wait_ready("promo")["status"]
    assert alias_target(mlflow_client, name, "champion") == "4"
    assert alias_target(mlflow_client, name, "challenger") is None
    assert status["aliases"] == {"champion": "4"}
    assert status["aliasSummary"] == "champion=4"
    by_version = {v["version"]: v for v in status["versions"]}
    assert by_version["4"]["aliases"] == ["champion"] and by_version["3"]["aliases"] == []
    messages = [e.message for e in events_for(core, namespace, "promo") if e.reason == "Updated"]
    assert any("alias 'champion' from version 3 to version 4" in m for m in messages)


def test_only_aliases_this_object_declared_are_removed(models, mlflow_client, namespace):
    name = unique()
    add_versions(mlflow_client, name, 2, namespace)
    models.create("owner", {"name": name, "aliases": {"champion": "1"}})
    models.wait_ready("owner")
    mlflow_client.set_registered_model_alias(name, "shadow", "2")
    models.patch_spec("owner", {"aliases": None})
    models.wait_ready("owner")
    aliases = mlflow_client.get_registered_model(name).aliases
    assert "champion" not in aliases and aliases["shadow"] == "2"


def test_declared_version_missing_is_version_not_found_until_a_training_run_registers_it(
    models, mlflow_client, custom, namespace
):
    name = unique()
    models.create("waiting", {"name": name, "aliases": {"champion": "1"},
                              "versions": [{"version": 1, "description": "first"}]})
    condition = models.wait_reason("waiting", "VersionNotFound")
    assert "version 1 (alias champion, spec.versions)" in condition["message"]
    assert models.condition("waiting", "Reconciling")["status"] == "True"
    assert models.condition("waiting", "VersionNotFound")["status"] == "True"
    # A TrainingRun trains and registers version 1.
    runs = Objects(custom, namespace, "trainingruns", "TrainingRun")
    runs.create("train", {"experimentName": unique("exp"), "registerModel": {"name": name},
                          "template": {"metadata": {"annotations": {"sandbox.mlflow.operator.dev/hold": "true"}},
                                       "spec": {"containers": [{"name": "t", "image": "trainer:1"}]}}})
    assert play(namespace, "train", TRAINER + ["--model-name", "model"]) == 0
    runs.wait_ready("train")
    status = models.wait_ready("waiting", timeout=DRIFT_WAIT)["status"]
    assert models.condition("waiting", "VersionNotFound") is None
    assert alias_target(mlflow_client, name, "champion") == "1"
    assert mlflow_client.get_model_version(name, "1").description == "first"
    assert status["versions"][0]["runId"] == runs.get("train")["status"]["runId"]
    assert status["versions"][0]["source"].startswith("models:/m-")


def test_stages_descriptions_and_version_tags_follow_the_spec(models, mlflow_client, namespace):
    name = unique()
    add_versions(mlflow_client, name, 2, namespace)
    models.create("staged", {"name": name, "versions": [
        {"version": "1", "stage": "Production", "description": "baseline", "tags": {"validated": "yes"}},
        {"version": "2", "stage": "Staging"},
    ]})
    status = models.wait_ready("staged")["status"]
    v1, v2 = mlflow_client.get_model_version(name, "1"), mlflow_client.get_model_version(name, "2")
    assert (v1.current_stage, v1.description, v1.tags["validated"]) == ("Production", "baseline", "yes")
    assert v2.current_stage == "Staging"
    assert [v["stage"] for v in status["versions"]] == ["Production", "Staging"]
    models.patch_spec("staged", {"versions": [{"version": "1", "stage": "Production", "description": "baseline"},
                                              {"version": "2", "stage": "Staging"}]})
    models.wait_ready("staged")
    assert "validated" not in mlflow_client.get_model_version(name, "1").tags


def test_archive_existing_versions_archives_the_previous_production_version(models, mlflow_client, namespace):
    name = unique()
    add_versions(mlflow_client, name, 2, namespace)
    models.create("archiver", {"name": name, "archiveExistingVersions": True,
                               "versions": [{"version": "1", "stage": "Production"}]})
    models.wait_ready("archiver")
    models.patch_spec("archiver", {"versions": [{"version": "2", "stage": "Production"}]})
    models.wait_ready("archiver")
    assert mlflow_client.get_model_version(name, "2").current_stage == "Production"
    assert mlflow_client.get_model_version(name, "1").current_stage == "Archived"


def test_enforce_reverts_hand_edits(models, mlflow_client, core, namespace):
    name = unique()
    add_versions(mlflow_client, name, 2, namespace)
    models.create("enforced", {"name": name, "description": "declared", "aliases": {"champion": "2"},
                               "versions": [{"version": "2", "stage": "Production"}]})
    models.wait_ready("enforced")
    mlflow_client.set_registered_model_alias(name, "champion", "1")
    mlflow_client.update_registered_model(name, description="edited by hand")
    mlflow_client.transition_model_version_stage(name, "2", "Archived")

    def reverted():
        model = mlflow_client.get_registered_model(name)
        return (model.aliases.get("champion") == "2" and model.description == "declared"
                and mlflow_client.get_model_version(name, "2").current_stage == "Production")

    wait_for(reverted, timeout=DRIFT_WAIT, message="hand edits to be reverted")
    wait_for(lambda: "DriftCorrected" in event_reasons(core, namespace, "enforced"), timeout=10,
             message="a DriftCorrected event")


def test_observe_reports_hand_edits_without_reverting_them(models, mlflow_client, core, namespace):
    name = unique()
    add_versions(mlflow_client, name, 2, namespace)
    models.create("observed", {"name": name, "driftPolicy": "Observe", "aliases": {"champion": "2"}})
    models.wait_ready("observed")
    mlflow_client.set_registered_model_alias(name, "champion", "1")
    condition = wait_for(lambda: models.condition("observed", "Drifted"), timeout=DRIFT_WAIT,
                         message="a Drifted condition")
    assert condition["status"] == "True"
    assert "alias 'champion' from version 1 to version 2" in condition["message"]
    assert alias_target(mlflow_client, name, "champion") == "1"
    assert "DriftDetected" in event_reasons(core, namespace, "observed")
    assert models.condition("observed")["status"] == "True"
    # A change to the spec is applied even under Observe, and clears the drift.
    models.patch_spec("observed", {"description": "promoted again"})
    models.wait_ready("observed")
    assert alias_target(mlflow_client, name, "champion") == "2"
    assert models.condition("observed", "Drifted") is None


def test_status_mirrors_versions_registered_by_anyone(models, mlflow_client, namespace):
    name = unique()
    models.create("mirror", {"name": name})
    models.wait_ready("mirror")
    add_versions(mlflow_client, name, 3, namespace)
    mlflow_client.set_registered_model_alias(name, "by-hand", "3")
    # The alias is set after the versions: a drift check may see the versions first.
    status = wait_for(lambda: (lambda s: s if s.get("versionCount") == 3 and s.get("aliases") else None)(
        models.get("mirror")["status"]), timeout=DRIFT_WAIT, message="three versions and the alias in status")
    assert [v["version"] for v in status["versions"]] == ["1", "2", "3"]
    assert status["versions"][2]["aliases"] == ["by-hand"]
    assert status["versions"][0]["source"] == f"s3://bucket/{name}/0"
    assert status["versions"][0]["status"] == "READY"
    assert status["aliases"] == {"by-hand": "3"}


def test_a_declared_version_tag_changed_by_hand_is_restored(models, mlflow_client, namespace):
    """A version tag moves none of MLflow's timestamps: the drift pass reads declared tags anyway."""
    name = unique()
    add_versions(mlflow_client, name, 2, namespace)
    models.create("tagged", {"name": name, "versions": [{"version": "1", "tags": {"validated": "yes"}}]})
    models.wait_ready("tagged")
    mlflow_client.set_model_version_tag(name, "1", "validated", "no")
    wait_for(lambda: mlflow_client.get_model_version(name, "1").tags.get("validated") == "yes",
             timeout=DRIFT_WAIT, message="the declared version tag to be restored")


def test_a_description_written_by_hand_on_a_version_reaches_status(models, mlflow_client, namespace):
    name = unique()
    add_versions(mlflow_client, name, 3, namespace)
    models.create("described", {"name": name})
    models.wait_ready("described")
    mlflow_client.update_model_version(name, "2", description="notes written in the MLflow UI")
    wait_for(lambda: models.get("described")["status"]["versions"][1].get("description")
             == "notes written in the MLflow UI", timeout=DRIFT_WAIT, message="the description in status")


def operator_counter(sandbox, metric: str, kind: str) -> float:
    """A counter of the sandbox operator's /metrics, for one kind."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{sandbox.ports['operator-metrics']}/metrics", timeout=10).read()
    return sum(sample.value for family in text_string_to_metric_families(text.decode())
               for sample in family.samples if sample.name == metric and sample.labels.get("kind") == kind)


def test_drift_passes_do_not_read_again_every_version_of_a_model_that_did_not_change(
        models, mlflow_client, namespace, sandbox):
    name = unique()
    add_versions(mlflow_client, name, 200, namespace)

    def passes() -> float:
        return operator_counter(sandbox, "mlflow_operator_drift_pass_duration_seconds_count", "RegisteredModel")

    def versions_read() -> float:
        return operator_counter(sandbox, "mlflow_operator_model_versions_read_total", "RegisteredModel")

    def after_passes(count: int) -> None:
        start = passes()
        wait_for(lambda: passes() >= start + count, timeout=DRIFT_WAIT, message=f"{count} drift passes")

    before = versions_read()
    models.create("many", {"name": name, "aliases": {"champion": "200"}})
    assert models.wait_ready("many")["status"]["versionCount"] == 200
    after_passes(2)  # the reconcile and the first pass over the model read all its versions
    assert versions_read() - before >= 200
    read = versions_read()
    after_passes(2)
    assert versions_read() - read < 200
    assert models.condition("many")["status"] == "True"


def test_a_model_deleted_by_hand_is_reported(models, mlflow_client):
    name = unique()
    models.create("vanishing", {"name": name})
    models.wait_ready("vanishing")
    mlflow_client.delete_registered_model(name)
    condition = models.wait_reason("vanishing", "DeletedInMLflow", timeout=DRIFT_WAIT)
    assert name in condition["message"]


def test_deletion_policy_delete_removes_the_model(models, mlflow_client, namespace):
    name = unique()
    add_versions(mlflow_client, name, 1, namespace)
    models.create("removed", {"name": name, "deletionPolicy": "Delete"})
    models.wait_ready("removed")
    models.delete("removed")
    wait_for(lambda: not models.exists("removed"), timeout=30, message="object to be gone")
    assert mlflow_client.search_registered_models(filter_string=f"name = '{name}'") == []


def test_deletion_policy_retain_keeps_the_model(models, mlflow_client):
    name = unique()
    models.create("kept", {"name": name})
    models.wait_ready("kept")
    models.delete("kept")
    wait_for(lambda: not models.exists("kept"), timeout=30, message="object to be gone")
    assert mlflow_client.get_registered_model(name).name == name


def test_kubectl_get_shows_versions_aliases_and_readiness(models, mlflow_client, sandbox, namespace):
    name = unique()
    add_versions(mlflow_client, name, 2, namespace)
    models.create("cols", {"name": name, "aliases": {"champion": "2", "baseline": "1"}})
    models.wait_ready("cols")
    out = sandbox.kubectl("get", "registeredmodels", "-n", namespace).stdout.splitlines()
    assert out[0].split() == ["NAME", "MLFLOW", "NAME", "VERSIONS", "ALIASES", "READY", "REASON", "AGE"]
    assert out[1].split()[:6] == ["cols", name, "2", "baseline=1,champion=2", "True", "Reconciled"]


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"aliases": {"latest": "1"}}, "reserved alias names"),
        ({"aliases": {"v3": "1"}}, "reserved alias names"),
        ({"aliases": {"bad alias": "1"}}, "alias names may only contain"),
        ({"aliases": {"champion": "0"}}, "alias targets must be version numbers"),
        ({"aliases": {"champion": "three"}}, "alias targets must be version numbers"),
        ({"versions": [{"version": "1"}, {"version": "1"}]}, "Duplicate value"),
        ({"versions": [{"version": "x"}]}, "version must be a version number"),
        ({"versions": [{"version": "1", "stage": "Live"}]}, "Unsupported value"),
        ({"archiveExistingVersions": True, "versions": [{"version": "1", "stage": "Production"},
                                                        {"version": "2", "stage": "Production"}]},
         "at most one version may be declared Production"),
        ({"name": "a/b"}, "spec.name"),
        ({"driftPolicy": "Ignore"}, "Unsupported value"),
        ({"tags": {"k8s.uid": "x"}}, "reserved"),
    ],
)
def test_invalid_specs_are_rejected_by_the_api_server(models, spec, expected):
    with pytest.raises(ApiException) as raised:
        models.create("invalid", spec)
    assert raised.value.status == 422
    assert expected in json.loads(raised.value.body)["message"]


def test_the_name_is_immutable(models):
    models.create("fixed", {"name": unique()})
    with pytest.raises(ApiException) as raised:
        models.patch_spec("fixed", {"name": unique()})
    assert "name is immutable" in json.loads(raised.value.body)["message"]
