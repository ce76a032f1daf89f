"""Tenancy: which MLflow entities an object may take over, use, or delete. No I/O.

An entity belongs to the object whose uid it is tagged with, or (created by a TrainingRun
on its namespace's behalf) to a namespace alone, or to nobody (created outside the
operator). One rule for every kind (docs/decisions/0007-tenancy.md):

- an object takes over what is its own, what its namespace owns with no (living) object, or
  an unowned entity when it says `spec.adopt: true`;
- a TrainingRun logs and registers only into entities of its own namespace;
- an object deletes only what it owns itself;
- anything else is a Conflict naming the owner, and nothing is changed.
"""

from __future__ import annotations

import enum
import re

from mlflow_operator.api.common import TAG_KIND, TAG_NAME, TAG_NAMESPACE, TAG_UID, ObjectIdentity
from mlflow_operator.logic.conditions import ReconcileProblem, stalled
from mlflow_operator.logic.reasons import Reason

# Written by TrainingRuns before entities carried k8s.namespace: "TrainingRun <namespace>/<name>".
CREATED_BY_TAG = "k8s.createdBy"


class Relation(enum.Enum):
    OURS = "ours"  # tagged with this object's uid
    NAMESPACE = "namespace"  # this namespace's, no object owns it
    OTHER_OBJECT = "other object"  # another object of this namespace owns it
    OTHER_NAMESPACE = "other namespace"
    UNOWNED = "unowned"  # created outside the operator


def owner_namespace(tags: dict[str, str]) -> str | None:
    namespace = tags.get(TAG_NAMESPACE)
    if namespace:
        return namespace
    created_by = tags.get(CREATED_BY_TAG, "")
    kind, _, ref = created_by.partition(" ")
    if kind == "TrainingRun" and "/" in ref:
        return ref.split("/", 1)[0]
    return None


def relation(tags: dict[str, str], identity: ObjectIdentity) -> Relation:
    uid, namespace = tags.get(TAG_UID) or None, owner_namespace(tags)
    if uid and uid == identity.uid:
        return Relation.OURS
    if namespace and namespace != identity.namespace:
        return Relation.OTHER_NAMESPACE
    if uid:
        # A uid with no namespace tag cannot be placed in a namespace: treat it as foreign.
        return Relation.OTHER_OBJECT if namespace else Relation.OTHER_NAMESPACE
    return Relation.NAMESPACE if namespace else Relation.UNOWNED


def describe_owner(tags: dict[str, str]) -> str:
    if tags.get(TAG_UID):
        kind = tags.get(TAG_KIND, "object")
        return f"{kind} {tags.get(TAG_NAMESPACE, '?')}/{tags.get(TAG_NAME, '?')} (uid {tags[TAG_UID]})"
    namespace = owner_namespace(tags)
    return f"namespace {namespace!r}" if namespace else "nobody (created outside the operator)"


def take_over(tags: dict[str, str], identity: ObjectIdentity, adopt: bool, what: str,
              owner_alive: bool = True) -> Relation:
    """Whether this object may bind to an existing entity of its name (Experiment,
    RegisteredModel); raises a Conflict naming the owner otherwise. An entity whose owning
    object of this namespace no longer exists (deleted with deletionPolicy Retain) belongs
    to the namespace again, so re-applying a manifest takes it back."""
    found = relation(tags, identity)
    if found is Relation.OTHER_OBJECT and not owner_alive:
        return Relation.NAMESPACE
    if found in (Relation.OURS, Relation.NAMESPACE):
        return found
    if found is Relation.UNOWNED:
        if adopt:
            return found
        raise ReconcileProblem(stalled(
            Reason.CONFLICT,
            f"{what} exists and was not created by the operator; set spec.adopt: true to take it over "
            "(its ownership tags are then set to this object), or choose another name",
        ))
    raise ReconcileProblem(stalled(Reason.CONFLICT, f"{what} is owned by {describe_owner(tags)}; choose another name"))


def use_for_namespace(tags: dict[str, str], identity: ObjectIdentity, what: str) -> None:
    """A TrainingRun may log into or register into an entity of its own namespace only."""
    found = relation(tags, identity)
    if found in (Relation.OURS, Relation.NAMESPACE, Relation.OTHER_OBJECT):
        return
    if found is Relation.UNOWNED:
        raise ReconcileProblem(stalled(
            Reason.CONFLICT,
            f"{what} was not created by the operator and belongs to no namespace; declare it in this "
            "namespace with spec.adopt: true (an Experiment or RegisteredModel) to use it, or choose another name",
        ))
    raise ReconcileProblem(stalled(Reason.CONFLICT, f"{what} is owned by {describe_owner(tags)}; choose another name"))


def may_delete(tags: dict[str, str], identity: ObjectIdentity) -> bool:
    """Only what this very object owns is ever deleted, whatever the kind."""
    return relation(tags, identity) is Relation.OURS


def namespace_tags(identity: ObjectIdentity) -> dict[str, str]:
    """Tags for an entity a TrainingRun creates on its namespace's behalf: the namespace owns
    it, and an Experiment or RegisteredModel of that namespace may take it over."""
    return {TAG_NAMESPACE: identity.namespace, CREATED_BY_TAG: f"{identity.kind} {identity.namespace}/{identity.name}"}


# What a namespace's name looks like (a DNS label): a name's first '/'-part that could be one.
_NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def refuse_other_namespace_prefix(name: str, namespace: str, field: str) -> None:
    """Experiment names `<namespace>/...` are that namespace's (the default name of its
    Experiments): no other namespace may take one first and hold it. A first part that cannot
    be a namespace's name (`Users/...`, `Shared/...`) is nobody's prefix."""
    head, slash, _ = name.partition("/")
    if slash and head != namespace and _NAMESPACE_NAME.fullmatch(head):
        raise ReconcileProblem(stalled(
            Reason.NAME_OUTSIDE_NAMESPACE,
            f"{field} {name!r} is inside namespace {head!r}'s prefix ({head}/...); a name whose first part "
            f"could be a namespace must start with this namespace's: {namespace}/...",
        ))
