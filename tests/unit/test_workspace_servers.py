"""Workspace servers (MLflow workspaces with Kubernetes authorization): which identity and
workspace the operator uses, how names and pods differ there, and the check that a training
ServiceAccount may log before anything is created. The sandbox's workspace server runs the
same paths for real (tests/e2e/test_workspaces.py)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from mlflow_operator.api.common import ObjectIdentity, TrackingSpec
from mlflow_operator.api.experiment import ExperimentSpec
from mlflow_operator.api.trainingrun import TrainingRunSpec
from mlflow_operator.handlers import common as handlers_common
from mlflow_operator.handlers.trainingrun import _reconcile
from mlflow_operator.logic import trainingrun as run_logic
from mlflow_operator.logic.conditions import ReconcileProblem
from mlflow_operator.logic.experiment import desired_experiment
from mlflow_operator.reconcilers.common import Services, resolve_target
from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.tracking.choice import choose_target
from mlflow_operator.tracking.servers import TokenFile

from fakes import TEST_KEYS, FakeKube, FakeMlflow, Writes

WORKSPACE_SERVER = "http://mlflow-ws:5000"
OPEN_SERVER = "http://mlflow:5000"
NAMESPACE = "team-a"
IDENTITY = ObjectIdentity(kind="Experiment", namespace=NAMESPACE, name="churn", uid="uid-1")


def config(tmp_path: Path, **overrides: Any) -> OperatorConfig:
    token = tmp_path / "token"
    if not token.exists():
        token.write_text("operator-token\n")
    settings: dict[str, Any] = {
        "default_tracking_uri": WORKSPACE_SERVER, "workspace_tracking_servers": (WORKSPACE_SERVER,),
        "allowed_tracking_servers": (OPEN_SERVER,), "workspace_token": TokenFile(token), "ownership_keys": TEST_KEYS,
    }
    return OperatorConfig(**{**settings, **overrides})


def test_the_operator_calls_a_workspace_server_in_the_objects_namespace_with_its_own_token(tmp_path):
    services = Services(config(tmp_path), FakeMlflow(Writes()), FakeKube(Writes()))
    target = asyncio.run(resolve_target(services, NAMESPACE, None))
    assert (target.workspace, target.credentials.token) == (NAMESPACE, "operator-token")


def test_a_server_without_workspaces_gets_no_workspace(tmp_path):
    services = Services(config(tmp_path), FakeMlflow(Writes()), FakeKube(Writes()))
    target = asyncio.run(resolve_target(services, NAMESPACE, TrackingSpec(uri=OPEN_SERVER)))
    assert target.workspace is None and target.credentials.token is None


def test_a_credentials_secret_for_a_workspace_server_is_refused(tmp_path):
    with pytest.raises(ReconcileProblem) as raised:
        choose_target(TrackingSpec.model_validate({"secretRef": {"name": "creds"}}), config(tmp_path))
    assert raised.value.outcome.reason == "InvalidSpec" and "secretRef" in raised.value.outcome.message


def test_an_unreadable_operator_token_is_a_condition_not_a_crash(tmp_path):
    services = Services(config(tmp_path, workspace_token=TokenFile(tmp_path / "missing")), FakeMlflow(Writes()),
                        FakeKube(Writes()))
    with pytest.raises(ReconcileProblem) as raised:
        asyncio.run(resolve_target(services, NAMESPACE, None))
    assert raised.value.outcome.reason == "OperatorTokenUnreadable"


def test_a_rotated_token_is_read_again_after_a_minute(tmp_path):
    path, now = tmp_path / "token", [0.0]
    path.write_text("first")
    token = TokenFile(path, clock=lambda: now[0])
    assert token.read() == "first"
    path.write_text("second")
    now[0] = 59.0
    assert token.read() == "first"
    now[0] = 60.0
    assert token.read() == "second"


def test_in_a_workspace_an_experiments_default_name_has_no_namespace_prefix():
    assert desired_experiment(ExperimentSpec(), IDENTITY, in_workspace=True).name == "churn"
    assert desired_experiment(ExperimentSpec(), IDENTITY).name == f"{NAMESPACE}/churn"


def test_in_a_workspace_a_name_with_another_namespaces_prefix_is_only_a_name():
    spec = ExperimentSpec.parse({"name": "team-b/churn"})
    assert desired_experiment(spec, IDENTITY, in_workspace=True).name == "team-b/churn"
    with pytest.raises(ReconcileProblem):
        desired_experiment(spec, IDENTITY)


def test_in_a_workspace_an_artifact_location_is_refused():
    spec = ExperimentSpec.parse({"artifactLocation": "s3://bucket/churn"})
    with pytest.raises(ReconcileProblem) as raised:
        desired_experiment(spec, IDENTITY, in_workspace=True)
    assert "artifactLocation" in raised.value.outcome.message


def run_spec(**template_spec: Any) -> TrainingRunSpec:
    containers = [{"name": "train", "image": "train:1",
                   "env": [{"name": "MLFLOW_WORKSPACE", "value": "team-b"},
                           {"name": "MLFLOW_TRACKING_AUTH", "value": "basic"}]}]
    return TrainingRunSpec.parse({"experimentName": "e", "template": {"spec": {"containers": containers,
                                                                                 **template_spec}}})


def test_pods_of_a_workspace_server_authenticate_as_their_service_account_with_no_credential():
    identity = ObjectIdentity(kind="TrainingRun", namespace=NAMESPACE, name="r", uid="uid-r")
    job = run_logic.build_job(run_spec(), identity, "run-1", "1", WORKSPACE_SERVER,
                              run_logic.CredentialSource.for_service_account())
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "MLFLOW_TRACKING_AUTH", "value": "kubernetes-namespaced"} in env
    assert not any("valueFrom" in e for e in env)
    # The template cannot name another workspace or another auth provider.
    assert [e["name"] for e in env].count("MLFLOW_TRACKING_AUTH") == 1
    assert not any(e["name"] == "MLFLOW_WORKSPACE" for e in env)


def test_the_pods_service_account_is_the_templates_or_default():
    assert run_logic.pod_service_account(run_spec()) == "default"
    assert run_logic.pod_service_account(run_spec(serviceAccountName="trainer")) == "trainer"


LOGGER = logging.getLogger("workspace-test")


def training_run(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlflow.operator.dev/v1alpha1", "kind": "TrainingRun",
        "metadata": {"namespace": NAMESPACE, "name": name},
        "spec": {"experimentName": "churn", "template": {"spec": {
            "serviceAccountName": "trainer", "containers": [{"name": "train", "image": "train:1"}]}}},
    }


def training_world(tmp_path: Path) -> tuple[FakeKube, FakeMlflow, dict[str, Any]]:
    writes = Writes()
    kube, mlflow = FakeKube(writes), FakeMlflow(writes)
    kube.add_object("trainingruns", training_run("r"))
    memo = {"services": Services(config(tmp_path), mlflow, kube), "objects": {}}
    return kube, mlflow, memo


def reconcile(kube: FakeKube, memo: dict[str, Any], name: str = "r") -> dict[str, Any]:
    body = kube.objects[("trainingruns", NAMESPACE, name)]
    asyncio.run(_reconcile({"metadata": dict(body["metadata"])}, memo, LOGGER, retry=None))
    return kube.objects[("trainingruns", NAMESPACE, name)].get("status") or {}


@pytest.fixture(autouse=True)
def no_events(monkeypatch):
    monkeypatch.setattr(handlers_common, "post_events", lambda body, events: None)


def ready(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_a_service_account_rbac_does_not_allow_gets_a_condition_and_no_run_or_job(tmp_path):
    kube, mlflow, memo = training_world(tmp_path)
    status = reconcile(kube, memo)
    assert ready(status)["reason"] == "ServiceAccountNotAuthorized"
    assert "--serviceaccount=team-a:trainer" in ready(status)["message"]
    assert "--clusterrole=mlflow-operator-training" in ready(status)["message"]
    assert kube.jobs == {} and mlflow.runs == {}


def test_once_bound_the_run_starts_and_the_next_run_of_that_account_is_not_asked_about_at_once(tmp_path):
    kube, mlflow, memo = training_world(tmp_path)
    kube.bound_service_accounts.add((NAMESPACE, "trainer"))
    assert reconcile(kube, memo).get("runId") and (NAMESPACE, "r") in kube.jobs
    asked = kube.access_reviews
    kube.add_object("trainingruns", training_run("r2"))
    assert reconcile(kube, memo, "r2").get("runId") and (NAMESPACE, "r2") in kube.jobs
    assert kube.access_reviews == asked > 0
