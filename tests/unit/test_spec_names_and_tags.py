"""What a spec may name and tag, as the operator parses it (the CRDs refuse the same at admission)."""

from __future__ import annotations

import pytest

from mlflow_operator.api.experiment import ExperimentSpec
from mlflow_operator.api.registeredmodel import RegisteredModelSpec
from mlflow_operator.api.trainingrun import TrainingRunSpec

TEMPLATE = {"spec": {"containers": [{"name": "t", "image": "i"}]}}


@pytest.mark.parametrize("key", ["mlflow.operator.dev/promoted-by", "k8s.uid", "k8s.namespace",
                                 "k8s.owner-signature"])
def test_spec_tags_cannot_carry_the_operators_own_keys(key):
    with pytest.raises(ValueError, match="written by the operator only"):
        ExperimentSpec.parse({"tags": {key: "x"}})
    with pytest.raises(ValueError, match="written by the operator only"):
        TrainingRunSpec.parse({"experimentName": "e", "template": TEMPLATE,
                               "registerModel": {"name": "m", "tags": {key: "x"}}})
    with pytest.raises(ValueError, match="written by the operator only"):
        RegisteredModelSpec.parse({"versions": [{"version": "1", "tags": {key: "x"}}]})


def test_other_tags_are_kept():
    assert ExperimentSpec.parse({"tags": {"team": "a", "k8s.job": "j"}}).tags == {"team": "a", "k8s.job": "j"}


@pytest.mark.parametrize("parse", [
    lambda name: ExperimentSpec.parse({"name": name}),
    lambda name: RegisteredModelSpec.parse({"name": name}),
    lambda name: TrainingRunSpec.parse({"experimentName": name, "template": TEMPLATE}),
    lambda name: TrainingRunSpec.parse({"experimentName": "e", "template": TEMPLATE, "registerModel": {"name": name}}),
])
def test_a_name_with_both_quote_kinds_is_refused(parse):
    with pytest.raises(ValueError, match="both kinds of quote"):
        parse("it's \"x\"")
    parse("it's")
