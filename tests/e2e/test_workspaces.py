"""The sandbox's default server is a workspace server: MLflow 3.17 with workspaces, Kubeflow's Kubernetes workspace
provider and Kubernetes authorization (mlflow-kubernetes-plugins), run from the chart's server
image. MLflow itself keeps namespaces apart there: the operator acts for a namespace in its
workspace with its own ServiceAccount token, and training containers on the real node log as
their ServiceAccount (MLFLOW_TRACKING_AUTH=kubernetes-namespaced) with no static credential.

What is checked here is what a tenant could try: a container of namespace B, holding exactly
what the operator gives its pods, reaching for A's runs, models and aliases; a ServiceAccount
nobody bound; a person's token with and without a RoleBinding."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
from kubernetes import client

from helpers import TRAINING_CLUSTER_ROLE, Objects, bind_cluster_role, wait_for

IMAGE = "mlflow-operator-examples/churn-train:0.1.0"
REAL_NODE_LABEL = "sandbox.mlflow.operator.dev/real-node"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"


class WorkspaceServer:
    """REST calls to the workspace server as one bearer token, in one workspace."""

    def __init__(self, uri: str, token: str) -> None:
        self.uri, self.token = uri, token

    def call(self, method: str, endpoint: str, workspace: str, **fields) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", "X-MLFLOW-WORKSPACE": workspace}
        url = f"{self.uri}/api/2.0/mlflow/{endpoint}"
        if method == "GET":
            return requests.get(url, params=fields, headers=headers, timeout=10)
        return requests.request(method, url, json=fields, headers=headers, timeout=10)

    def ok(self, method: str, endpoint: str, workspace: str, **fields) -> dict:
        response = self.call(method, endpoint, workspace, **fields)
        assert response.status_code == 200, (endpoint, response.status_code, response.text[:300])
        return response.json()


@pytest.fixture(scope="module")
def workspace_uri(sandbox) -> str:
    return sandbox.tracking_uri


@pytest.fixture(scope="module")
def admin(sandbox, workspace_uri) -> WorkspaceServer:
    """The sandbox user of `.sandbox/env` (MLFLOW_TRACKING_TOKEN): allowed in every workspace."""
    return WorkspaceServer(workspace_uri, (Path(sandbox.state) / "mlflow-user-token").read_text().strip())


def on_the_real_node(core, namespace: str) -> None:
    core.patch_namespace(namespace, {"metadata": {"labels": {REAL_NODE_LABEL: "true"}}})


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def churn_run(workspace_uri: str, experiment: str, **extra) -> dict:
    return {
        "experimentName": experiment, "tracking": {"uri": workspace_uri}, "params": {"n_estimators": "5"},
        "template": {"spec": {"containers": [{"name": "train", "image": IMAGE,
                                              "args": ["--n-estimators", "$(MLFLOW_PARAM_N_ESTIMATORS)"]}]}},
        **extra,
    }


def test_an_experiment_is_created_in_its_namespaces_workspace_without_the_namespace_prefix(
        experiments, namespace, other_namespace, workspace_uri, admin, custom):
    experiments.create("churn", {"tracking": {"uri": workspace_uri}})
    status = experiments.wait_ready("churn")["status"]
    assert status["experimentName"] == "churn"
    found = admin.ok("GET", "experiments/get-by-name", namespace, experiment_name="churn")["experiment"]
    assert found["experiment_id"] == status["experimentId"]
    # The same name in another namespace is another workspace's experiment, not a conflict.
    theirs = Objects(custom, other_namespace, "experiments", "Experiment")
    theirs.create("churn", {"tracking": {"uri": workspace_uri}})
    their_status = theirs.wait_ready("churn")["status"]
    assert their_status["experimentName"] == "churn" and their_status["experimentId"] != status["experimentId"]
    found = admin.ok("GET", "experiments/get-by-name", other_namespace, experiment_name="churn")["experiment"]
    assert found["experiment_id"] == their_status["experimentId"]


def test_a_service_account_without_the_binding_gets_a_condition_and_no_job_until_it_is_bound(
        custom, core, batch, namespace, workspace_uri, admin):
    on_the_real_node(core, namespace)
    core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="trainer")))
    runs = Objects(custom, namespace, "trainingruns", "TrainingRun")
    spec = churn_run(workspace_uri, unique("exp"))
    spec["template"]["spec"]["serviceAccountName"] = "trainer"
    runs.create("unbound", spec)
    condition = runs.wait_reason("unbound", "ServiceAccountNotAuthorized")
    assert f"--clusterrole={TRAINING_CLUSTER_ROLE}" in condition["message"]
    assert f"--serviceaccount={namespace}:trainer" in condition["message"]
    assert batch.list_namespaced_job(namespace).items == []
    assert "runId" not in (runs.get("unbound").get("status") or {})

    bind_cluster_role(core.api_client, namespace, TRAINING_CLUSTER_ROLE, "trainer", name="trainer-mlflow-training")
    status = runs.wait_ready("unbound", timeout=240)["status"]
    assert status["runStatus"] == "FINISHED" and status["metrics"]["accuracy"] > 0.5
    [job] = batch.list_namespaced_job(namespace).items
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["MLFLOW_TRACKING_AUTH"].value == "kubernetes-namespaced"
    assert not {"MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & set(env)
    # The container logged as its ServiceAccount: the run's metrics are in this namespace's workspace.
    run = admin.ok("GET", "runs/get", namespace, run_id=status["runId"])["run"]
    assert any(metric["key"] == "accuracy" for metric in run["data"]["metrics"])


PROBE = """
import json, os, requests, mlflow
from mlflow import MlflowClient

a_ns, a_run, a_model = os.environ["A_NAMESPACE"], os.environ["A_RUN"], os.environ["A_MODEL"]
uri = os.environ["MLFLOW_TRACKING_URI"]
mlflow_client = MlflowClient()
outcome = {}

def attempt(name, call):
    try:
        call()
        outcome[name] = "allowed"
    except Exception as error:
        outcome[name] = "refused"

attempt("get_run", lambda: mlflow_client.get_run(a_run))
attempt("set_tag", lambda: mlflow_client.set_tag(a_run, "hijacked", "yes"))
attempt("set_alias", lambda: mlflow_client.set_registered_model_alias(a_model, "champion", "1"))
attempt("delete_model", lambda: mlflow_client.delete_registered_model(a_model))
# The pod's own token, naming A's workspace outright.
token = open("TOKEN_PATH").read().strip()
headers = {"Authorization": "Bearer " + token, "X-MLFLOW-WORKSPACE": a_ns}
api = uri + "/api/2.0/mlflow/"
outcome["get_run_in_a"] = requests.get(api + "runs/get", params={"run_id": a_run}, headers=headers).status_code
outcome["set_tag_in_a"] = requests.post(api + "runs/set-tag", headers=headers,
                                        json={"run_id": a_run, "key": "hijacked", "value": "yes"}).status_code
outcome["alias_in_a"] = requests.post(api + "registered-models/alias", headers=headers,
                                      json={"name": a_model, "alias": "champion", "version": "1"}).status_code
outcome["delete_model_in_a"] = requests.delete(api + "registered-models/delete", headers=headers,
                                               json={"name": a_model}).status_code
outcome["search_in_a"] = len(requests.get(api + "runs/search", headers=headers,
                                          params={"experiment_ids": os.environ["A_EXPERIMENT"]}).json().get("runs", []))
with mlflow.start_run():
    mlflow.log_metric("own", 1.0)
    mlflow.set_tag("probe.outcome", json.dumps(outcome, sort_keys=True))
""".replace("TOKEN_PATH", TOKEN_PATH)


def test_a_container_of_another_namespace_cannot_read_or_change_a_teams_runs_models_or_aliases(
        custom, core, namespace, other_namespace, workspace_uri, admin):
    # Team A trains and registers a model with an alias, as its own ServiceAccount (both
    # namespaces bound the training ClusterRole to their default ServiceAccount).
    for team in (namespace, other_namespace):
        on_the_real_node(core, team)
    model = unique("churn")
    a_runs = Objects(custom, namespace, "trainingruns", "TrainingRun")
    a_runs.create("a", churn_run(workspace_uri, unique("exp"),
                                 registerModel={"name": model, "aliases": ["champion"]}))
    a_status = a_runs.wait_ready("a", timeout=240)["status"]
    a_run = a_status["runId"]

    # Team B's container holds exactly what the operator gives its pods, and reaches for A's.
    b_runs = Objects(custom, other_namespace, "trainingruns", "TrainingRun")
    b_runs.create("b", {
        "experimentName": unique("exp"), "tracking": {"uri": workspace_uri},
        "template": {"spec": {"containers": [{
            "name": "probe", "image": IMAGE, "command": ["python", "-c", PROBE],
            "env": [{"name": "A_NAMESPACE", "value": namespace}, {"name": "A_RUN", "value": a_run},
                    {"name": "A_MODEL", "value": model},
                    {"name": "A_EXPERIMENT", "value": a_status["experimentId"]}],
        }]}},
    })
    b_status = b_runs.wait_ready("b", timeout=240)["status"]
    b_run = admin.ok("GET", "runs/get", other_namespace, run_id=b_status["runId"])["run"]
    tags = {tag["key"]: tag["value"] for tag in b_run["data"]["tags"]}
    outcome = json.loads(tags["probe.outcome"])
    assert {k: outcome[k] for k in ("get_run", "set_tag", "set_alias", "delete_model")} == dict.fromkeys(
        ("get_run", "set_tag", "set_alias", "delete_model"), "refused")
    assert all(outcome[k] in (401, 403) for k in ("get_run_in_a", "set_tag_in_a", "alias_in_a", "delete_model_in_a"))
    assert outcome["search_in_a"] == 0
    # It logged to its own run...
    assert any(metric["key"] == "own" for metric in b_run["data"]["metrics"])
    # ...and A's run, model and alias are as A left them.
    a_tags = {tag["key"] for tag in admin.ok("GET", "runs/get", namespace, run_id=a_run)["run"]["data"]["tags"]}
    assert "hijacked" not in a_tags
    version = admin.ok("GET", "registered-models/alias", namespace, name=model, alias="champion")["model_version"]
    assert version["run_id"] == a_run


def test_a_user_token_with_a_binding_lists_its_workspace_and_one_without_does_not(
        experiments, core, namespace, workspace_uri, sandbox):
    experiments.create("listed", {"tracking": {"uri": workspace_uri}})
    experiment_id = experiments.wait_ready("listed")["status"]["experimentId"]
    for account in ("reader", "stranger"):
        core.create_namespaced_service_account(namespace, client.V1ServiceAccount(
            metadata=client.V1ObjectMeta(name=account)))
    bind_cluster_role(core.api_client, namespace, TRAINING_CLUSTER_ROLE, "reader", name="reader-mlflow-training")

    def token_for(account: str) -> str:
        return sandbox.kubectl("create", "token", account, "-n", namespace).stdout.strip()

    def listed(account: str) -> list[str]:
        server = WorkspaceServer(workspace_uri, token_for(account))
        found = server.call("GET", "experiments/search", namespace, max_results=100)
        return [e["name"] for e in found.json().get("experiments", [])] if found.status_code == 200 else []

    wait_for(lambda: "listed" in listed("reader"), timeout=30, message="the bound user lists the experiment")
    assert listed("stranger") == []
    stranger = WorkspaceServer(workspace_uri, token_for("stranger"))
    assert stranger.call("GET", "experiments/get", namespace, experiment_id=experiment_id).status_code == 403
    nobody = WorkspaceServer(workspace_uri, "not-a-token")
    assert nobody.call("GET", "experiments/search", namespace, max_results=1).status_code == 401


def test_the_sandbox_env_makes_the_workspace_server_usable_from_a_shell(sandbox, namespace, experiments,
                                                                        workspace_uri):
    experiments.create("from-shell", {"tracking": {"uri": workspace_uri}})
    experiments.wait_ready("from-shell")
    script = (f". {sandbox.state / 'env'} && curl -sf \"$MLFLOW_TRACKING_URI/api/2.0/mlflow/"
              f"experiments/get-by-name?experiment_name=from-shell\" -H \"Authorization: Bearer $MLFLOW_TRACKING_TOKEN\" "
              f"-H 'X-MLFLOW-WORKSPACE: {namespace}'")
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["experiment"]["name"] == "from-shell"
