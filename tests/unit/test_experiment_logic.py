"""Experiment decisions: which experiment to bind, what to change, what to leave alone."""

import pytest

from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.api.experiment import ExperimentSpec
from mlflow_operator.logic.conditions import ReconcileProblem
from mlflow_operator.logic.experiment import (
    artifact_location_mismatch,
    bind_by_name,
    bind_known,
    desired_experiment,
    plan_updates,
)
from mlflow_operator.tracking.entities import ExperimentInfo

ME = ObjectIdentity(kind="Experiment", namespace="ml", name="churn", uid="uid-1")


def experiment(name="ml/churn", stage="active", tags=None, location=None, id_="7") -> ExperimentInfo:
    return ExperimentInfo(id_, name, stage, location, dict(tags or {}))


def desired(**spec):
    return desired_experiment(ExperimentSpec.parse(spec), ME)


def reason_of(call) -> str:
    with pytest.raises(ReconcileProblem) as raised:
        call()
    return raised.value.outcome.reason


def test_default_name_is_namespace_slash_name():
    assert desired().name == "ml/churn"


def test_description_becomes_the_note_tag():
    assert desired(description="hello").tags == {"mlflow.note.content": "hello"}


def test_no_experiment_of_that_name_means_create():
    assert bind_by_name(None, "ml/churn", ME).kind == "create"


def test_an_experiment_created_outside_the_operator_is_adopted_only_with_spec_adopt():
    assert reason_of(lambda: bind_by_name(experiment(), "ml/churn", ME)) == "Conflict"
    assert bind_by_name(experiment(), "ml/churn", ME, adopt=True).kind == "adopt"


def test_an_experiment_this_namespace_owns_with_no_object_is_adopted():
    assert bind_by_name(experiment(tags={"k8s.namespace": "ml"}), "ml/churn", ME).kind == "adopt"


def test_another_namespaces_experiment_is_a_conflict_even_with_spec_adopt():
    found = experiment(tags={"k8s.namespace": "other-team"})
    assert reason_of(lambda: bind_by_name(found, "ml/churn", ME, adopt=True)) == "Conflict"


def test_our_own_experiment_is_used_and_our_deleted_one_restored():
    assert bind_by_name(experiment(tags={"k8s.uid": "uid-1"}), "ml/churn", ME).kind == "use"
    assert bind_by_name(experiment(stage="deleted", tags={"k8s.uid": "uid-1"}), "ml/churn", ME).kind == "restore"


def test_experiment_owned_by_another_object_is_a_conflict():
    assert reason_of(lambda: bind_by_name(experiment(tags={"k8s.uid": "other"}), "ml/churn", ME)) == "Conflict"


def test_untagged_deleted_experiment_blocks_the_name():
    found = experiment(stage="deleted")
    assert reason_of(lambda: bind_by_name(found, "ml/churn", ME, adopt=True)) == "NameTakenByDeletedExperiment"


def test_known_experiment_deleted_by_hand_is_reported():
    assert reason_of(lambda: bind_known(None, "7", ME)) == "DeletedInMLflow"
    assert reason_of(lambda: bind_known(experiment(stage="deleted"), "7", ME)) == "DeletedInMLflow"


def test_plan_sets_missing_and_changed_tags_and_ownership():
    plan = plan_updates(desired(tags={"a": "1", "b": "2"}), experiment(tags={"a": "0"}), set())
    set_keys = {c.key for c in plan.changes if c.action == "set_tag"}
    assert set_keys == {"a", "b", "k8s.namespace", "k8s.name", "k8s.uid", "k8s.kind"}


def test_plan_removes_only_tags_it_managed_before():
    current = experiment(tags={**ME.tags(), "old": "x", "by-hand": "y"})
    plan = plan_updates(desired(), current, previously_managed={"old"})
    assert [(c.action, c.key) for c in plan.changes] == [("delete_tag", "old")]


def test_plan_renames_when_the_name_differs():
    plan = plan_updates(desired(name="new"), experiment(tags=ME.tags()), set())
    assert plan.rename_to == "new"
    assert plan.describe() == "renamed to 'new'"


def test_an_in_sync_experiment_needs_no_change():
    current = experiment(tags={**ME.tags(), "a": "1"})
    assert plan_updates(desired(tags={"a": "1"}), current, {"a"}).changes == []


def test_adopting_with_another_artifact_location_is_refused():
    assert artifact_location_mismatch(desired(artifactLocation="s3://b/x"), experiment(location="s3://b/y"))
    assert artifact_location_mismatch(desired(artifactLocation="s3://b/x/"), experiment(location="s3://b/x")) is None
    assert artifact_location_mismatch(desired(), experiment(location="s3://b/y")) is None
