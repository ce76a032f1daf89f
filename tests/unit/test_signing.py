"""Ownership tags the operator signs (logic/signing.py): which tags prove ownership."""

from __future__ import annotations

import pytest

from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.logic import ownership, signing
from mlflow_operator.logic.signing import KeyRing

SERVER = "http://mlflow:5000"
OLD = KeyRing.of({"2026-01": b"o" * 32})
RING = KeyRing.of({"2026-01": b"o" * 32, "2026-06": b"n" * 32})
A = ObjectIdentity(kind="Experiment", namespace="team-a", name="train", uid="uid-a")


def signed_for_a(entity_id: str = "7", ring: KeyRing = RING) -> dict[str, str]:
    return signing.signed(ring, SERVER, "experiment", entity_id, A.tags())


def test_tags_the_operator_signed_prove_ownership():
    tags = {**signed_for_a(), "team": "a"}
    assert signing.verified(RING, SERVER, "experiment", "7", tags) == tags
    assert ownership.relation(signing.verified(RING, SERVER, "experiment", "7", tags), A) is ownership.Relation.OURS


def test_ownership_tags_anyone_wrote_make_an_entity_unowned():
    forged = {"k8s.namespace": "team-a", "k8s.createdBy": "TrainingRun team-a/x", "team": "b"}
    assert signing.verified(RING, SERVER, "experiment", "7", forged) == {"team": "b"}
    assert ownership.relation({"team": "b"}, A) is ownership.Relation.UNOWNED


@pytest.mark.parametrize("changed", [
    {"entity_id": "8"},  # copied onto another experiment
    {"server": "http://other:5000"},  # copied onto another server's
    {"entity": "registered-model"},
])
def test_a_signature_proves_nothing_for_another_entity_or_server(changed):
    where = {"server": SERVER, "entity": "experiment", "entity_id": "7", **changed}
    tags = signed_for_a()
    assert signing.verified(RING, where["server"], where["entity"], where["entity_id"], tags) == {}


def test_a_signature_proves_nothing_once_the_tags_name_another_namespace():
    tags = {**signed_for_a(), "k8s.namespace": "team-b"}
    assert "k8s.namespace" not in signing.verified(RING, SERVER, "experiment", "7", tags)


def test_a_key_of_the_ring_verifies_and_the_key_sorting_last_signs():
    by_old_key = signed_for_a(ring=OLD)
    assert signing.verified(RING, SERVER, "experiment", "7", by_old_key) == by_old_key
    # The operator's plan compares the tag with the signature it would write now: another key's
    # differs, so the entity is signed again with the newest key.
    assert by_old_key["k8s.owner-signature"] != signed_for_a()["k8s.owner-signature"]
    assert signed_for_a()["k8s.owner-signature"].startswith("v1.2026-06.")


def test_a_key_removed_from_the_ring_verifies_nothing():
    assert signing.verified(KeyRing.of({"2026-06": b"n" * 32}), SERVER, "experiment", "7",
                            signed_for_a(ring=OLD)) == {}


def test_an_experiment_signed_over_its_name_at_creation_is_owned_until_signed_over_its_id():
    at_creation = signing.signed(RING, SERVER, "experiment-name", "team-a/train", A.tags())
    assert signing.verified(RING, SERVER, "experiment", "7", at_creation,
                            or_as=("experiment-name", "team-a/train")) == at_creation
    assert signing.verified(RING, SERVER, "experiment", "7", at_creation,
                            or_as=("experiment-name", "team-a/renamed")) == {}


def test_without_a_key_nothing_can_be_signed():
    with pytest.raises(signing.NoSigningKey):
        signing.signed(KeyRing(), SERVER, "experiment", "7", A.tags())


@pytest.mark.parametrize("keys, message", [({"k": b"short"}, "shorter than 32"), ({"a/b": b"x" * 32}, "must be")])
def test_a_key_ring_refuses_short_keys_and_odd_names(keys, message):
    with pytest.raises(ValueError, match=message):
        KeyRing.of(keys)
