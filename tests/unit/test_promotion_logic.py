"""Promotion rules decide whether a version may take an alias, and say why not; audit tags
record who moved it, when, from where. Pure logic: no MLflow, no cluster."""

from __future__ import annotations

import datetime as dt

from mlflow_operator.api.registeredmodel import PromotionRule, RegisteredModelSpec
from mlflow_operator.logic.promotion import Actor, Evidence, audit_tags, evaluate
from mlflow_operator.logic.provenance import gitops_source


def rule(**fields: object) -> PromotionRule:
    return PromotionRule.model_validate(fields)


def version(number: str, metrics: dict[str, float] | None = None, tags: dict[str, str] | None = None,
            run_id: str | None = "run-x") -> Evidence:
    return Evidence(number, tags or {}, run_id, metrics if metrics is not None else {})


def test_a_version_within_its_metric_bounds_passes():
    verdict = evaluate(rule(metrics={"accuracy": {"min": 0.9}, "latency_ms": {"max": 50}}),
                       version("4", {"accuracy": 0.93, "latency_ms": 41}), None)
    assert verdict.passed
    assert verdict.seen == {"accuracy": 0.93, "latency_ms": 41}


def test_a_metric_below_its_minimum_blocks_with_the_value_seen():
    verdict = evaluate(rule(metrics={"accuracy": {"min": 0.9}}), version("4", {"accuracy": 0.85}), None)
    assert verdict.failures == ("metric accuracy is 0.85, below the minimum 0.9",)


def test_a_metric_above_its_maximum_blocks():
    verdict = evaluate(rule(metrics={"latency_ms": {"max": 50}}), version("4", {"latency_ms": 70}), None)
    assert verdict.failures == ("metric latency_ms is 70, above the maximum 50",)


def test_a_missing_required_tag_blocks_and_the_tag_added_passes():
    policy = rule(tags={"validation": "passed"})
    assert evaluate(policy, version("4"), None).failures == ("tag validation is missing, needs 'passed'",)
    assert evaluate(policy, version("4", tags={"validation": "failed"}), None).failures == (
        "tag validation is 'failed', needs 'passed'",)
    assert evaluate(policy, version("4", tags={"validation": "passed"}), None).passed


def test_a_version_without_a_source_run_fails_a_metric_rule_clearly():
    verdict = evaluate(rule(metrics={"accuracy": {"min": 0.9}}), version("4", run_id=None), None)
    assert verdict.failures == ("version 4 has no source run, so it has no metric accuracy",)


def test_a_run_without_the_metric_or_a_deleted_run_fails_clearly():
    policy = rule(metrics={"accuracy": {"min": 0.9}})
    assert evaluate(policy, version("4", {"loss": 0.1}), None).failures == (
        "the source run run-x has no metric accuracy",)
    gone = Evidence("4", {}, "run-x", None)
    assert evaluate(policy, gone, None).failures == ("the source run run-x of version 4 is gone",)


def test_worse_than_the_current_holder_blocks_and_equal_passes():
    policy = rule(notWorseThanCurrent={"metric": "accuracy"})
    current = version("3", {"accuracy": 0.91})
    assert evaluate(policy, version("4", {"accuracy": 0.88}), current).failures == (
        "metric accuracy is 0.88, worse than 0.91 of version 3, which holds the alias now (maximize)",)
    assert evaluate(policy, version("4", {"accuracy": 0.91}), current).passed


def test_not_worse_with_minimize_blocks_a_higher_value():
    policy = rule(notWorseThanCurrent={"metric": "rmse", "goal": "minimize"})
    assert not evaluate(policy, version("4", {"rmse": 2.0}), version("3", {"rmse": 1.5})).passed
    assert evaluate(policy, version("4", {"rmse": 1.0}), version("3", {"rmse": 1.5})).passed


def test_not_worse_passes_when_nobody_holds_the_alias_or_the_holder_has_no_value():
    policy = rule(notWorseThanCurrent={"metric": "accuracy"})
    assert evaluate(policy, version("4", {"accuracy": 0.5}), None).passed
    assert evaluate(policy, version("4", {"accuracy": 0.5}), version("3", {})).passed


def test_every_failing_rule_is_reported_once():
    policy = rule(metrics={"accuracy": {"min": 0.9}}, tags={"validation": "passed"},
                  notWorseThanCurrent={"metric": "accuracy"})
    verdict = evaluate(policy, version("4", run_id=None), version("3", {"accuracy": 0.9}))
    assert verdict.failures == ("version 4 has no source run, so it has no metric accuracy",
                                "tag validation is missing, needs 'passed'")


def test_the_spec_reads_the_design_example():
    spec = RegisteredModelSpec.parse({"aliases": {"champion": "4"}, "promotion": {"champion": {
        "metrics": {"accuracy": {"min": 0.9}, "latency_ms": {"max": 50}},
        "tags": {"validation": "passed"},
        "notWorseThanCurrent": {"metric": "accuracy", "goal": "maximize"}}}})
    champion = spec.promotion["champion"]
    assert champion.metrics["accuracy"].min == 0.9 and champion.metrics["latency_ms"].max == 50
    assert champion.not_worse_than_current is not None and champion.not_worse_than_current.metric == "accuracy"


def test_the_gitops_source_comes_from_the_annotations_and_flux_labels_bounded():
    metadata = {"annotations": {"mlflow.operator.dev/source-repo": "https://git.example/ml.git",
                                "mlflow.operator.dev/source-revision": "a" * 900,
                                "argocd.argoproj.io/tracking-id": "app:mlflow.operator.dev/RegisteredModel:ns/m"},
                "labels": {"kustomize.toolkit.fluxcd.io/name": "models",
                           "kustomize.toolkit.fluxcd.io/namespace": "flux-system"}}
    source = gitops_source(metadata)
    assert source["source-repo"] == "https://git.example/ml.git"
    assert source["source-revision"] == "a" * 500
    assert source["argocd-tracking-id"].startswith("app:")
    assert source["flux-kustomization"] == "flux-system/models"
    assert gitops_source({}) == {}


def test_audit_tags_say_when_who_the_previous_holder_and_the_source():
    actor = Actor("RegisteredModel", "team-a", "churn", 7, {"source-revision": "abc123"})
    tags = audit_tags("alias.champion", actor, dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc), "3")
    assert tags == {
        "mlflow.operator.dev/alias.champion.at": "2026-11-23T12:00:00Z",
        "mlflow.operator.dev/alias.champion.by": "RegisteredModel team-a/churn (generation 7)",
        "mlflow.operator.dev/alias.champion.previous": "3",
        "mlflow.operator.dev/alias.champion.source-revision": "abc123",
    }


def test_a_run_is_tagged_with_the_last_pod_its_node_and_the_training_images_digest():
    from mlflow_operator.cluster.snapshots import ContainerImage, PodSnapshot
    from mlflow_operator.logic.provenance import pod_run_tags

    first = PodSnapshot("train-abc", node="node-1", created="2026-11-23T10:00:00+00:00")
    retry = PodSnapshot("train-def", node="node-2", created="2026-11-23T10:05:00+00:00", containers=(
        ContainerImage("sidecar", "proxy:1", "proxy@sha256:" + "1" * 64),
        ContainerImage("train", "churn:1", "localhost/churn@sha256:" + "a" * 64),
    ))
    assert pod_run_tags([retry, first], "train") == {
        "k8s.pod": "train-def", "k8s.node": "node-2", "k8s.image.digest": "sha256:" + "a" * 64}
    assert pod_run_tags([], "train") == {}


def test_an_image_id_without_a_digest_gives_no_digest_tag():
    from mlflow_operator.logic.provenance import image_digest

    assert image_digest("docker-pullable://repo@sha256:" + "b" * 64) == "sha256:" + "b" * 64
    assert image_digest("sha256:" + "c" * 64) == "sha256:" + "c" * 64
    assert image_digest("") is None and image_digest("repo:tag") is None


def test_the_gitops_source_becomes_run_tags():
    from mlflow_operator.logic.provenance import source_run_tags

    metadata = {"annotations": {"mlflow.operator.dev/source-revision": "abc123"}}
    assert source_run_tags(metadata) == {"mlflow.operator.dev/source-revision": "abc123"}
