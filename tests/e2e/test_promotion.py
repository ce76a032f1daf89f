"""Promotion policy and audit against the real API server and MLflow registry: a version that
fails its alias's rule does not get the alias (PromotionBlocked) until it passes; every alias
move and stage change the operator makes leaves tags on the version and an Event."""

from __future__ import annotations

import json
import uuid

import pytest
from kubernetes.client.exceptions import ApiException

from helpers import GROUP, VERSION, Objects, events_for, signed_by_operator, wait_for

DRIFT_WAIT = 40
AUDIT = "mlflow.operator.dev/"
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def model_with_versions(mlflow_client, sandbox, namespace: str, metrics: list[dict[str, float]]) -> str:
    """A model of this namespace whose version i+1 comes from a run that logged metrics[i]
    (made as a TrainingRun of the namespace makes them: signed as the namespace's)."""
    name = f"promo-{uuid.uuid4().hex[:8]}"
    state, uri = sandbox.state, sandbox.tracking_uri
    experiment_id = mlflow_client.create_experiment(name, tags=signed_by_operator(
        state, uri, "experiment-name", name, {"k8s.namespace": namespace}))
    mlflow_client.create_registered_model(name, tags=signed_by_operator(
        state, uri, "registered-model", name, {"k8s.namespace": namespace}))
    for values in metrics:
        run = mlflow_client.create_run(experiment_id)
        for key, value in values.items():
            mlflow_client.log_metric(run.info.run_id, key, value)
        mlflow_client.set_terminated(run.info.run_id)
        mlflow_client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    return name


def champion(mlflow_client, name: str) -> str | None:
    return mlflow_client.get_registered_model(name).aliases.get("champion")


def condition(models: Objects, obj: str, kind: str) -> dict | None:
    status = models.get(obj).get("status") or {}
    return next((c for c in status.get("conditions") or [] if c["type"] == kind), None)


def wait_blocked(models: Objects, obj: str) -> dict:
    def blocked():
        found = condition(models, obj, "PromotionBlocked")
        return found if found and found["status"] == "True" else None

    return wait_for(blocked, timeout=60, message=f"{obj} PromotionBlocked")


def test_a_blocked_promotion_keeps_the_alias_and_promotes_once_the_tag_is_added(sandbox, 
    models, mlflow_client, core, namespace
):
    name = model_with_versions(mlflow_client, sandbox, namespace, [{"accuracy": 0.9}, {"accuracy": 0.95}])
    models.create("gated", {"name": name, "aliases": {"champion": "1"},
                            "promotion": {"champion": {"tags": {"validation": "passed"}}}})
    # Version 1 fails the rule too: a first alias is gated like any other.
    blocked = wait_blocked(models, "gated")
    assert "alias champion stays off version 1: tag validation is missing, needs 'passed'" in blocked["message"]
    mlflow_client.set_model_version_tag(name, "1", "validation", "passed")
    wait_for(lambda: champion(mlflow_client, name) == "1", timeout=DRIFT_WAIT, message="champion on 1")
    models.wait_ready("gated")

    models.patch_spec("gated", {"aliases": {"champion": "2"}})
    blocked = wait_blocked(models, "gated")
    assert "version 2" in blocked["message"] and "validation is missing" in blocked["message"]
    ready = condition(models, "gated", "Ready")
    assert ready is not None and ready["status"] == "False" and ready["reason"] == "PromotionBlocked"
    assert champion(mlflow_client, name) == "1"
    assert "PromotionBlocked" in [e.reason for e in events_for(core, namespace, "gated")]

    mlflow_client.set_model_version_tag(name, "2", "validation", "passed")
    wait_for(lambda: champion(mlflow_client, name) == "2", timeout=DRIFT_WAIT, message="champion promoted to 2")
    models.wait_ready("gated")
    # Like VersionNotFound, the condition goes once its cause is gone.
    assert condition(models, "gated", "PromotionBlocked") is None


def test_a_metric_bound_blocks_a_version_below_it_with_the_value_seen(sandbox, models, mlflow_client, namespace):
    name = model_with_versions(mlflow_client, sandbox, namespace, [{"accuracy": 0.93}, {"accuracy": 0.85}])
    models.create("bounded", {"name": name, "aliases": {"champion": "1"},
                              "promotion": {"champion": {"metrics": {"accuracy": {"min": 0.9}}}}})
    models.wait_ready("bounded")
    assert champion(mlflow_client, name) == "1"
    models.patch_spec("bounded", {"aliases": {"champion": "2"}})
    blocked = wait_blocked(models, "bounded")
    assert "metric accuracy is 0.85, below the minimum 0.9" in blocked["message"]
    assert champion(mlflow_client, name) == "1"


def test_a_version_worse_than_the_current_champion_is_not_promoted(sandbox, models, mlflow_client, namespace):
    name = model_with_versions(mlflow_client, sandbox, namespace, [{"rmse": 1.5}, {"rmse": 2.0}, {"rmse": 1.2}])
    models.create("best", {"name": name, "aliases": {"champion": "1"},
                           "promotion": {"champion": {"notWorseThanCurrent": {"metric": "rmse", "goal": "minimize"}}}})
    models.wait_ready("best")
    models.patch_spec("best", {"aliases": {"champion": "2"}})
    blocked = wait_blocked(models, "best")
    assert "metric rmse is 2, worse than 1.5 of version 1, which holds the alias now (minimize)" in blocked["message"]
    assert champion(mlflow_client, name) == "1"
    models.patch_spec("best", {"aliases": {"champion": "3"}})
    wait_for(lambda: champion(mlflow_client, name) == "3", timeout=30, message="champion promoted to 3")


def test_a_pull_request_style_promotion_leaves_audit_tags_an_event_and_status(sandbox, 
    models, mlflow_client, custom, core, namespace
):
    name = model_with_versions(mlflow_client, sandbox, namespace, [{"accuracy": 0.9}, {"accuracy": 0.92}])
    source = {"mlflow.operator.dev/source-repo": "https://git.example.com/ml/models.git",
              "mlflow.operator.dev/source-revision": "1111111"}
    body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RegisteredModel",
            "metadata": {"name": "audited", "annotations": source},
            "spec": {"name": name, "aliases": {"champion": "1"}}}
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "registeredmodels", body)
    models.wait_ready("audited")
    # The merged pull request: a new revision moves the alias.
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "registeredmodels", "audited", {
        "metadata": {"annotations": {"mlflow.operator.dev/source-revision": "2222222"}},
        "spec": {"aliases": {"champion": "2"}}})
    status = models.wait_ready("audited")["status"]
    assert champion(mlflow_client, name) == "2"
    tags = mlflow_client.get_model_version(name, "2").tags
    generation = models.get("audited")["metadata"]["generation"]
    assert tags[f"{AUDIT}alias.champion.previous"] == "1"
    assert tags[f"{AUDIT}alias.champion.by"] == f"RegisteredModel {namespace}/audited (generation {generation})"
    assert tags[f"{AUDIT}alias.champion.source-revision"] == "2222222"
    assert tags[f"{AUDIT}alias.champion.source-repo"] == "https://git.example.com/ml/models.git"
    assert tags[f"{AUDIT}alias.champion.at"].endswith("Z")
    assert status["lastPromotion"]["alias"] == "champion" and status["lastPromotion"]["version"] == "2"
    assert status["lastPromotion"]["previousVersion"] == "1"
    assert status["lastPromotion"]["sourceRevision"] == "2222222"
    promoted = [e.message for e in events_for(core, namespace, "audited") if e.reason == "Promoted"]
    assert any("alias champion moved to version 2 from version 1" in m and "revision 2222222" in m
               for m in promoted)


def test_a_stage_change_leaves_audit_tags(sandbox, models, mlflow_client, namespace):
    name = model_with_versions(mlflow_client, sandbox, namespace, [{"accuracy": 0.9}])
    models.create("staged", {"name": name, "versions": [{"version": "1", "stage": "Staging"}]})
    models.wait_ready("staged")
    tags = mlflow_client.get_model_version(name, "1").tags
    assert tags[f"{AUDIT}stage.previous"] == "None"
    assert tags[f"{AUDIT}stage.by"].startswith(f"RegisteredModel {namespace}/staged")


@pytest.mark.parametrize(
    "promotion, expected",
    [
        ({"champion": {"metrics": {"accuracy": {"min": 0.9, "max": 0.5}}}}, "min must not be greater than its max"),
        ({"champion": {"metrics": {"accuracy": {}}}}, "needs min, max or both"),
        ({"champion": {}}, "needs at least one of metrics, tags or notWorseThanCurrent"),
        ({"champion": {"notWorseThanCurrent": {"goal": "maximize"}}}, "metric"),
        ({"champion": {"notWorseThanCurrent": {"metric": "a", "goal": "best"}}}, "Unsupported value"),
        ({"bad alias": {"tags": {"validation": "passed"}}}, "promotion keys are alias names"),
    ],
)
def test_malformed_promotion_rules_are_rejected_at_admission(models, promotion, expected):
    with pytest.raises(ApiException) as raised:
        models.create("invalid", {"aliases": {"champion": "1"}, "promotion": promotion})
    assert raised.value.status == 422
    assert expected in json.loads(raised.value.body)["message"]
