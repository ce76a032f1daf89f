"""RegisteredModel decisions: aliases, stages, per-version settings, what may be removed."""

import pytest

from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.api.registeredmodel import RegisteredModelSpec
from mlflow_operator.logic.conditions import ReconcileProblem
from mlflow_operator.logic.registeredmodel import (
    STATUS_DESCRIPTION_CHARS,
    Managed,
    bind,
    desired_model,
    plan,
    status_view,
)
from mlflow_operator.tracking.entities import ModelVersionInfo, RegisteredModelInfo

ME = ObjectIdentity(kind="RegisteredModel", namespace="ml", name="churn", uid="uid-1")


def desired(**spec):
    return desired_model(RegisteredModelSpec.parse(spec), ME)


def model(aliases=None, tags=None, description="") -> RegisteredModelInfo:
    return RegisteredModelInfo("churn", description, {**ME.tags(), **(tags or {})}, dict(aliases or {}))


def version(number: str, stage="None", description="", tags=None, aliases=()) -> ModelVersionInfo:
    return ModelVersionInfo("churn", number, stage, description, f"s3://b/{number}", None, "READY",
                            tuple(aliases), dict(tags or {}))


VERSIONS = [version("1"), version("2"), version("3"), version("4")]


def actions(p):
    return [(c.action, c.key or c.version, c.value) for c in p.changes]


def test_versions_and_alias_targets_accept_numbers_or_strings():
    spec = RegisteredModelSpec.parse({"aliases": {"champion": 4}, "versions": [{"version": 3}]})
    assert spec.aliases == {"champion": "4"} and spec.versions[0].version == "3"
    with pytest.raises(ValueError):
        RegisteredModelSpec.parse({"aliases": {"champion": "v4"}})


def test_promotion_moves_the_alias():
    p = plan(desired(aliases={"champion": "4"}), model(aliases={"champion": "3"}), VERSIONS, Managed())
    assert actions(p) == [("set_alias", "champion", "4")]
    assert p.describe() == "alias 'champion' from version 3 to version 4"


def test_an_alias_to_a_missing_version_is_reported_not_set():
    p = plan(desired(aliases={"champion": "9"}), model(), VERSIONS, Managed())
    assert p.changes == []
    assert p.missing == {"9": ["alias champion"]}
    assert p.describe_missing() == "declared but not in MLflow yet: version 9 (alias champion)"


def test_only_aliases_declared_before_are_removed():
    current = model(aliases={"champion": "1", "shadow": "2"})
    p = plan(desired(), current, VERSIONS, Managed(aliases=frozenset({"champion"})))
    assert actions(p) == [("delete_alias", "champion", "")]


def test_managed_aliases_are_the_declared_ones_that_exist():
    p = plan(desired(aliases={"a": "1", "b": "9"}), model(), VERSIONS, Managed())
    assert p.managed.aliases == frozenset({"a"})


def test_stage_description_and_tags_per_version():
    spec = {"versions": [{"version": "2", "stage": "Production", "description": "d", "tags": {"k": "v"}}]}
    p = plan(desired(**spec), model(), VERSIONS, Managed())
    assert actions(p) == [("transition", "2", "Production"), ("set_version_description", "2", "d"),
                          ("set_version_tag", "k", "v")]


def test_version_tags_no_longer_declared_are_removed():
    current = [version("1", tags={"k": "v", "theirs": "x"})]
    p = plan(desired(), model(), current, Managed(version_tags={"1": frozenset({"k"})}))
    assert actions(p) == [("delete_version_tag", "k", "")]


def test_undeclared_fields_are_left_alone():
    current = [version("1", stage="Production", description="by hand")]
    assert plan(desired(versions=[{"version": "1"}]), model(description="x"), current, Managed()).changes == []


def test_binding_rules():
    assert bind(None, "churn", ME, known=False) == "create"
    assert bind(model(), "churn", ME, known=True) == "use"
    assert bind(RegisteredModelInfo("churn", "", {}, {}), "churn", ME, known=False, adopt=True) == "adopt"
    assert bind(RegisteredModelInfo("churn", "", {"k8s.namespace": ME.namespace}, {}), "churn", ME,
                known=False) == "adopt"
    with pytest.raises(ReconcileProblem):
        bind(RegisteredModelInfo("churn", "", {}, {}), "churn", ME, known=False)
    with pytest.raises(ReconcileProblem) as raised:
        bind(RegisteredModelInfo("churn", "", {"k8s.uid": "other"}, {}), "churn", ME, known=False)
    assert raised.value.outcome.reason == "Conflict"
    with pytest.raises(ReconcileProblem) as raised:
        bind(None, "churn", ME, known=True)
    assert raised.value.outcome.reason == "DeletedInMLflow"


def test_status_view_lists_versions_with_their_aliases():
    view = status_view(model(aliases={"champion": "2", "backup": "2"}), [version("1"), version("2")])
    assert view["versionCount"] == 2
    assert view["aliasSummary"] == "backup=2,champion=2"
    assert view["versions"][1]["aliases"] == ["backup", "champion"]
    assert view["versions"][0]["aliases"] == []


def test_status_lists_the_newest_versions_and_only_those_that_matter_besides():
    versions = [version(str(n)) for n in range(1, 101)]
    versions[9] = version("10", stage="Production")
    versions[19] = version("20", stage="Archived")  # not shown for that
    view = status_view(model(aliases={"champion": "3"}), versions, declared=frozenset({"5"}))
    shown = [v["version"] for v in view["versions"]]
    assert shown == ["3", "5", "10", *[str(n) for n in range(81, 101)]]
    assert view["versionCount"] == 100


def test_a_long_version_description_is_cut_in_status():
    view = status_view(model(), [version("1", description="x" * 5000)])
    assert view["versions"][0]["description"] == "x" * STATUS_DESCRIPTION_CHARS
