"""A hostile tenant, against the sandbox: someone who may create the operator's objects, Jobs,
pods and Secrets in their own namespace, and whose pods reach MLflow. Each test plays one
attack and checks the secure outcome: nothing a tenant writes decides which MLflow entity or
run the operator acts on (DESIGN.md, trust rule; docs/security.md)."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from helpers import events_for, stays, wait_for
from servers import ForwardingServer, SilentServer
from test_tenancy import TRAINER, objects, play, template, unique, wait_phase

RUN_ID_LABEL = "mlflow.operator.dev/run-id"


def forged_job(name: str, owner: dict, labels: dict[str, str]) -> client.V1Job:
    """A Job a tenant writes by hand, claiming to be `owner`'s (controller and all); suspended,
    so it makes no pod."""
    reference = client.V1OwnerReference(api_version=owner["apiVersion"], kind=owner["kind"],
                                        name=owner["metadata"]["name"], uid=owner["metadata"]["uid"],
                                        controller=True)
    return client.V1Job(
        metadata=client.V1ObjectMeta(name=name, labels=labels, owner_references=[reference]),
        spec=client.V1JobSpec(suspend=True, template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
            restart_policy="Never", containers=[client.V1Container(name="c", image="forged:1")]))))


def forge_a_job_naming(custom, batch, namespace: str, run_id: str, experiment: dict,
                       before_the_job: Callable[[dict], object] = lambda evil: None) -> None:
    """B's attack: B's TrainingRun waits for an Experiment; meanwhile B writes its Job,
    labelled with `run_id` (after `before_the_job(evil)`, what B's pods do first). Checks
    that B's TrainingRun stops with JobConflict naming the run, never records it, and goes."""
    theirs = objects(custom, namespace, "TrainingRun")
    evil = theirs.create("evil", {"experimentRef": {"name": "later"}, "template": template()})
    theirs.wait_reason("evil", "ExperimentNotFound")
    before_the_job(evil)
    batch.create_namespaced_job(namespace, forged_job("evil", evil, {
        "mlflow.operator.dev/training-run": "evil", RUN_ID_LABEL: run_id}))
    objects(custom, namespace, "Experiment").create("later", experiment)

    condition = theirs.wait_reason("evil", "JobConflict", timeout=60)
    assert run_id in condition["message"]
    assert (theirs.get("evil").get("status") or {}).get("runId") != run_id
    theirs.delete("evil")
    wait_for(lambda: not theirs.exists("evil"), timeout=30, message="B's TrainingRun to go")


def test_a_forged_job_naming_another_tenants_run_touches_no_run(custom, namespace, other_namespace, batch,
                                                                 mlflow_client):
    mine = objects(custom, namespace, "TrainingRun")
    mine.create("victim", {"experimentName": unique("a-exp"), "template": template()})
    victim_run = wait_phase(mine, "victim", "Running")["status"]["runId"]

    forge_a_job_naming(custom, batch, other_namespace, victim_run, {})

    assert mlflow_client.get_run(victim_run).info.status == "RUNNING"
    assert mine.get("victim")["status"]["phase"] == "Running"


def test_a_forged_job_naming_a_run_whose_uid_tag_was_rewritten_touches_no_run(
        custom, namespace, other_namespace, batch, open_mlflow_client, sandbox):
    """On a server without workspaces B's pods can also write A's run's `k8s.uid` tag to name
    B's TrainingRun: the run is still not B's, since it is not in B's experiment."""
    open_server = {"tracking": {"uri": sandbox.open_tracking_uri}}
    mine = objects(custom, namespace, "TrainingRun")
    mine.create("victim", {"experimentName": unique("a-exp"), **open_server, "template": template()})
    victim_run = wait_phase(mine, "victim", "Running")["status"]["runId"]
    victim_uid = mine.get("victim")["metadata"]["uid"]

    def tag_as_bs(evil: dict) -> None:  # as B's pod can
        open_mlflow_client.set_tag(victim_run, "k8s.uid", evil["metadata"]["uid"])

    forge_a_job_naming(custom, batch, other_namespace, victim_run, open_server, before_the_job=tag_as_bs)

    assert open_mlflow_client.get_run(victim_run).info.status == "RUNNING"
    open_mlflow_client.set_tag(victim_run, "k8s.uid", victim_uid)  # A's run is A's again, for its cleanup


def test_deleting_a_training_run_leaves_a_same_named_job_it_does_not_control(runs, namespace, batch):
    stranger = client.V1Job(
        metadata=client.V1ObjectMeta(name="same-name"),
        spec=client.V1JobSpec(suspend=True, template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
            restart_policy="Never", containers=[client.V1Container(name="c", image="other:1")]))))
    batch.create_namespaced_job(namespace, stranger)
    runs.create("same-name", {"experimentName": unique("same"), "template": template()})
    assert "not controlled" in runs.wait_reason("same-name", "JobConflict", timeout=60)["message"]
    runs.delete("same-name")
    wait_for(lambda: not runs.exists("same-name"), timeout=30, message="the TrainingRun to go")
    assert stays(lambda: batch.read_namespaced_job("same-name", namespace).metadata.deletion_timestamp is None,
                 duration=2)


# --------------------------------------------------------------------------- admission

C = {"name": "t", "image": "i"}


def with_security(context: dict) -> dict:
    return {"containers": [{**C, "securityContext": context}]}


@pytest.mark.parametrize("pod_spec, refusal", [
    (with_security({"privileged": True}), "privileged containers"),
    (with_security({"allowPrivilegeEscalation": True}), "allowPrivilegeEscalation"),
    (with_security({"capabilities": {"add": ["NET_ADMIN"]}}), "add Linux capabilities"),
    ({"containers": [{**C, "ports": [{"containerPort": 80, "hostPort": 80}]}]}, "hostPort"),
    ({"containers": [C], "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}, "hostPath volumes"),
    ({"containers": [C], "hostNetwork": True}, "hostNetwork, hostPID and hostIPC"),
    ({"containers": [C], "hostPID": True}, "hostNetwork, hostPID and hostIPC"),
    ({"containers": [C], "hostIPC": True}, "hostNetwork, hostPID and hostIPC"),
    (with_security({"windowsOptions": {"hostProcess": True}}), "hostProcess"),
    ({"containers": [C], "securityContext": {"windowsOptions": {"hostProcess": True}}}, "hostProcess"),
    (with_security({"seLinuxOptions": {"type": "spc_t"}}), "seLinuxOptions"),
    ({"containers": [C], "securityContext": {"seLinuxOptions": {"user": "system_u"}}}, "seLinuxOptions"),
    (with_security({"seLinuxOptions": {"role": "sysadm_r"}}), "seLinuxOptions"),
    (with_security({"seccompProfile": {"type": "Unconfined"}}), "seccompProfile type Unconfined"),
    ({"containers": [C], "securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "seccompProfile"),
    (with_security({"appArmorProfile": {"type": "Unconfined"}}), "AppArmor profile Unconfined"),
    (with_security({"procMount": "Unmasked"}), "procMount must be Default"),
    ({"containers": [C], "securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}, "safe sysctls"),
    ({"initContainers": [{**C, "securityContext": {"privileged": True}}], "containers": [C]}, "privileged containers"),
])
def test_a_template_outside_the_pod_security_baseline_is_refused(runs, sweeps, pod_spec, refusal):
    with pytest.raises(ApiException) as refused:
        runs.create("risky", {"experimentName": "e", "template": {"spec": pod_spec}})
    assert refusal in refused.value.body
    with pytest.raises(ApiException) as refused:
        sweeps.create("risky", {"experimentName": "e", "objective": {"metric": "m"}, "maxTrials": 1,
                                "parameters": {"p": {"values": ["1"]}}, "template": {"spec": pod_spec}})
    assert refusal in refused.value.body


def test_an_apparmor_annotation_other_than_runtime_default_or_localhost_is_refused(runs):
    template: dict[str, Any] = {"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/t": "unconfined"}},
                "spec": {"containers": [C]}}
    with pytest.raises(ApiException) as refused:
        runs.create("risky", {"experimentName": "e", "template": template})
    assert "AppArmor" in refused.value.body
    template["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/t"] = "runtime/default"
    runs.create("fine", {"experimentName": "e", "template": template})


def test_a_baseline_template_is_accepted(runs):
    runs.create("fine", {"experimentName": "e", "template": {"spec": {
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"},
                            "sysctls": [{"name": "net.ipv4.tcp_keepalive_time", "value": "60"}]},
        "containers": [{**C, "securityContext": {"allowPrivilegeEscalation": False,
                                                  "seLinuxOptions": {"type": "container_t"},
                                                  "capabilities": {"drop": ["ALL"]}}}]}}})


@pytest.mark.parametrize("kind, spec", [
    ("Experiment", {"name": "{other}/churn"}),
    ("TrainingRun", {"experimentName": "{other}/churn", "template": {"spec": {"containers": [C]}}}),
])
def test_a_name_inside_another_namespaces_prefix_is_refused_at_admission(custom, namespace, other_namespace,
                                                                          kind, spec):
    theirs = objects(custom, namespace, kind)
    named = {key: value.format(other=other_namespace) if isinstance(value, str) else value
             for key, value in spec.items()}
    with pytest.raises(ApiException) as refused:
        theirs.create("squat", named)
    assert "another namespace's prefix" in refused.value.body and f"{namespace}/" in refused.value.body
    own = {key: value.format(other=namespace) if isinstance(value, str) else value for key, value in spec.items()}
    theirs.create("own", own)


def test_a_name_with_both_quote_kinds_is_refused_at_admission(models, runs):
    with pytest.raises(ApiException) as refused:
        models.create("quotes", {"name": "it's \"x\""})
    assert "both kinds of quote" in refused.value.body
    with pytest.raises(ApiException) as refused:
        runs.create("quotes", {"experimentName": "it's \"x\"", "template": {"spec": {"containers": [C]}}})
    assert "both kinds of quote" in refused.value.body


@pytest.mark.parametrize("key", ["mlflow.operator.dev/promoted-by", "k8s.uid", "k8s.owner-signature"])
def test_spec_tags_cannot_forge_ownership_or_audit_tags(runs, key):
    with pytest.raises(ApiException) as refused:
        runs.create("forge", {"experimentName": "e", "template": {"spec": {"containers": [C]}},
                              "registerModel": {"name": "m", "tags": {key: "passed"}}})
    assert "written by the operator only" in refused.value.body


# --------------------------------------------------------------------------- one server, every tenant


def test_drift_in_one_namespace_is_corrected_while_another_namespaces_server_answers_odd_json(
        custom, namespace, other_namespace, sandbox, mlflow_client):
    # The odd server is B's server without workspaces (it forwards to the sandbox's open one).
    with ForwardingServer(sandbox.ports["test-server"], sandbox.open_tracking_uri) as odd_server:
        theirs = objects(custom, other_namespace, "Experiment")
        theirs.create("odd", {"name": unique("b-odd"),
                              "tracking": {"uri": f"http://127.0.0.1:{odd_server.port}"}})
        theirs.wait_ready("odd")
        mine = objects(custom, namespace, "Experiment")
        mine.create("exp", {"tags": {"team": "a"}})
        experiment_id = mine.wait_ready("exp")["status"]["experimentId"]

        odd_server.odd = '{"experiments": [1], "experiment": [1], "next_page_token": {"x": 1}}'
        mlflow_client.set_experiment_tag(experiment_id, "team", "changed by hand")
        wait_for(lambda: mlflow_client.get_experiment(experiment_id).tags.get("team") == "a", timeout=60,
                 message="the drift pass to restore A's tag")
        condition = theirs.wait_reason("odd", "InvalidResponse", timeout=60)
        assert "[1]" not in condition["message"] and "JSON" in condition["message"]


def test_objects_on_a_silent_server_leave_the_operator_free_for_others(custom, namespace, other_namespace,
                                                                       sandbox):
    with SilentServer(sandbox.ports["test-server-2"]) as silent:
        stuck = objects(custom, other_namespace, "Experiment")
        for i in range(150):
            stuck.create(f"stuck-{i}", {"tracking": {"uri": f"http://127.0.0.1:{silent.port}"}})
        wait_for(lambda: silent.accepted >= 8, timeout=60, message="the silent server to hold requests")
        started = time.monotonic()
        mine = objects(custom, namespace, "Experiment")
        mine.create("healthy", {})
        mine.wait_ready("healthy", timeout=30)
        assert time.monotonic() - started < 10
        waiting = stuck.condition("stuck-149") or {}
        assert (waiting.get("reason"), waiting.get("status")) == ("TrackingUnavailable", "False")


# --------------------------------------------------------------------------- ownership tags


def test_a_forged_ownership_tag_is_not_taken_as_consent(experiments, namespace, open_mlflow_client, core, tmp_path,
                                                        sandbox):
    """Anyone holding the tracking URI of a server without workspaces can write
    `k8s.namespace`; only the operator signs it."""
    chosen = f"file://{tmp_path}/chosen-by-b"
    forged = open_mlflow_client.create_experiment(f"{namespace}/train", artifact_location=chosen,
                                             tags={"k8s.namespace": namespace,
                                                   "k8s.createdBy": f"TrainingRun {namespace}/x"})
    experiments.create("train", {"tracking": {"uri": sandbox.open_tracking_uri}})
    assert "spec.adopt: true" in experiments.wait_reason("train", "Conflict")["message"]
    assert "k8s.uid" not in open_mlflow_client.get_experiment(forged).tags

    experiments.patch_spec("train", {"adopt": True})
    status = experiments.wait_ready("train")["status"]
    assert (status["experimentId"], status["artifactLocation"]) == (forged, chosen)
    adopted = next(e for e in events_for(core, namespace, "train") if e.reason == "Adopted")
    assert chosen in adopted.message
    assert open_mlflow_client.get_experiment(forged).tags["k8s.owner-signature"].startswith("v1.")


def test_ownership_tags_copied_from_another_namespaces_experiment_prove_nothing(
        custom, namespace, other_namespace, open_mlflow_client, sandbox):
    open_server = {"tracking": {"uri": sandbox.open_tracking_uri}}
    mine = objects(custom, other_namespace, "Experiment")
    mine.create("exp", open_server)
    original = open_mlflow_client.get_experiment(mine.wait_ready("exp")["status"]["experimentId"])
    copy_name = f"{namespace}/copied"
    copied = open_mlflow_client.create_experiment(copy_name, tags={**original.tags, "k8s.namespace": namespace})
    theirs = objects(custom, namespace, "Experiment")
    theirs.create("copied", open_server)
    assert "spec.adopt: true" in theirs.wait_reason("copied", "Conflict")["message"]
    assert open_mlflow_client.get_experiment(copied).tags["k8s.namespace"] == namespace  # untouched


# --------------------------------------------------------------------------- aliases from any kind


def test_a_training_runs_alias_obeys_the_models_promotion_policy_and_is_audited(models, runs, namespace, core,
                                                                               mlflow_client):
    name = unique("guarded")
    models.create("guarded", {"name": name, "promotion": {"champion": {"metrics": {"acc": {"min": 0.9}}}}})
    models.wait_ready("guarded")
    experiment = unique("guarded-exp")

    runs.create("weak", {"experimentName": experiment, "template": template(),
                         "registerModel": {"name": name, "aliases": ["champion"]}})
    assert play(namespace, "weak", TRAINER + ["--model-name", "model", "--metric", "acc=0.5"]) == 0
    weak = runs.wait_ready("weak", timeout=90)["status"]
    assert weak["phase"] == "Succeeded" and weak["modelVersion"]["version"] == "1"
    assert "alias champion stays off version 1" in runs.condition("weak")["message"]
    warning = next(e for e in events_for(core, namespace, "weak", kind="TrainingRun") if e.reason == "PromotionBlocked")
    assert warning.type == "Warning" and "acc is 0.5, below the minimum 0.9" in warning.message
    assert "champion" not in mlflow_client.get_registered_model(name).aliases

    runs.create("strong", {"experimentName": experiment, "template": template(),
                           "registerModel": {"name": name, "aliases": ["champion"]}})
    assert play(namespace, "strong", TRAINER + ["--model-name", "model", "--metric", "acc=0.95"]) == 0
    runs.wait_ready("strong", timeout=90)
    assert mlflow_client.get_registered_model(name).aliases["champion"] == "2"
    record = mlflow_client.get_model_version(name, "2").tags
    assert record["mlflow.operator.dev/alias.champion.by"].startswith(f"TrainingRun {namespace}/strong")
    assert record["mlflow.operator.dev/alias.champion.previous"] == "none"
    assert "Promoted" in [e.reason for e in events_for(core, namespace, "strong", kind="TrainingRun")]
