"""Tenancy: one rule, for every kind, about which MLflow entities an object may take over,
use and delete (docs/decisions/0007-tenancy.md)."""

import pytest

from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.logic import ownership
from mlflow_operator.logic.conditions import ReconcileProblem
from mlflow_operator.logic.ownership import (
    Relation,
    describe_owner,
    may_delete,
    namespace_tags,
    relation,
    take_over,
    use_for_namespace,
)

ME = ObjectIdentity(kind="RegisteredModel", namespace="team-a", name="churn", uid="uid-a")
RUN = ObjectIdentity(kind="TrainingRun", namespace="team-a", name="train-1", uid="uid-r")
OURS = ME.tags()
SIBLING = {"k8s.namespace": "team-a", "k8s.name": "other", "k8s.uid": "uid-s", "k8s.kind": "RegisteredModel"}
FOREIGN = {"k8s.namespace": "team-b", "k8s.name": "churn", "k8s.uid": "uid-b", "k8s.kind": "RegisteredModel"}


def conflict_message(call) -> str:
    with pytest.raises(ReconcileProblem) as raised:
        call()
    assert raised.value.outcome.reason == "Conflict" and raised.value.outcome.state == "stalled"
    return raised.value.outcome.message


@pytest.mark.parametrize("tags, expected", [
    (OURS, Relation.OURS),
    ({"k8s.namespace": "team-a"}, Relation.NAMESPACE),
    ({"k8s.createdBy": "TrainingRun team-a/train-0"}, Relation.NAMESPACE),
    (SIBLING, Relation.OTHER_OBJECT),
    (FOREIGN, Relation.OTHER_NAMESPACE),
    ({"k8s.createdBy": "TrainingRun team-b/train-0"}, Relation.OTHER_NAMESPACE),
    ({"k8s.uid": "someone"}, Relation.OTHER_NAMESPACE),
    ({}, Relation.UNOWNED),
])
def test_relation_of_an_entity_to_an_object(tags, expected):
    assert relation(tags, ME) is expected


def test_another_namespaces_entity_is_never_taken_over_and_the_owner_is_named():
    message = conflict_message(lambda: take_over(FOREIGN, ME, adopt=True, what="registered model 'churn'"))
    assert "team-b/churn" in message and "uid-b" in message


def test_an_unowned_entity_needs_spec_adopt():
    assert "spec.adopt: true" in conflict_message(lambda: take_over({}, ME, adopt=False, what="model"))
    assert take_over({}, ME, adopt=True, what="model") is Relation.UNOWNED


def test_a_training_run_uses_only_its_own_namespaces_entities():
    use_for_namespace(SIBLING, RUN, "model")
    use_for_namespace({"k8s.namespace": "team-a"}, RUN, "model")
    assert "team-b" in conflict_message(lambda: use_for_namespace(FOREIGN, RUN, "model"))
    assert "spec.adopt" in conflict_message(lambda: use_for_namespace({}, RUN, "model"))


@pytest.mark.parametrize("tags", [SIBLING, FOREIGN, {"k8s.namespace": "team-a"}, {}])
def test_only_what_the_object_owns_itself_is_deleted(tags):
    assert may_delete(OURS, ME)
    assert not may_delete(tags, ME)


def test_entities_a_training_run_creates_belong_to_its_namespace():
    tags = namespace_tags(RUN)
    assert relation(tags, ME) is Relation.NAMESPACE
    assert relation(tags, ObjectIdentity(kind="Experiment", namespace="team-b", name="x", uid="u")) \
        is Relation.OTHER_NAMESPACE
    assert describe_owner(tags) == "namespace 'team-a'"


def test_an_entity_whose_owner_was_deleted_belongs_to_the_namespace_again():
    """An object deleted with deletionPolicy Retain, then applied again (a GitOps re-sync)."""
    assert take_over(SIBLING, ME, adopt=False, what="model", owner_alive=False) is Relation.NAMESPACE
    assert "team-a/other" in conflict_message(lambda: take_over(SIBLING, ME, adopt=False, what="model"))
    assert "team-b" in conflict_message(lambda: take_over(FOREIGN, ME, adopt=False, what="model", owner_alive=False))


@pytest.mark.parametrize("name", ["team-b/churn", "team-b/a/b", "x/y"])
def test_a_name_in_another_namespaces_prefix_is_refused(name):
    with pytest.raises(ReconcileProblem) as refused:
        ownership.refuse_other_namespace_prefix(name, "team-a", "spec.name")
    assert refused.value.outcome.reason == "NameOutsideNamespace"
    assert "team-a/" in refused.value.outcome.message


@pytest.mark.parametrize("name", ["team-a/churn", "churn", "Users/alice/churn", "Shared/x", "-x/y"])
def test_a_name_in_this_namespaces_prefix_or_no_namespaces_prefix_is_allowed(name):
    ownership.refuse_other_namespace_prefix(name, "team-a", "spec.name")
