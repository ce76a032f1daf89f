"""Types shared by the kinds: API coordinates, tracking settings, ownership tags."""

from __future__ import annotations

from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "mlflow.operator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KINDS = ("Experiment", "TrainingRun", "RegisteredModel", "TrainingSweep")
PLURALS = ("experiments", "trainingruns", "registeredmodels", "trainingsweeps")
# kopf's finalizer on every object the operator handles.
OPERATOR_FINALIZER = f"{GROUP}/finalizer"

# Tags on every MLflow entity the operator creates: which object owns it.
TAG_NAMESPACE = "k8s.namespace"
TAG_NAME = "k8s.name"
TAG_UID = "k8s.uid"
TAG_KIND = "k8s.kind"

# The operator's signature over an entity's ownership tags (logic/signing.py).
TAG_SIGNATURE = "k8s.owner-signature"
OWNERSHIP_TAGS = (TAG_NAMESPACE, TAG_NAME, TAG_UID, TAG_KIND, TAG_SIGNATURE)
# Tags under this prefix are the operator's (audit records, bookkeeping): never from a spec.
RESERVED_TAG_PREFIX = f"{GROUP}/"

# MLflow's own tag for an entity's description ("note").
NOTE_TAG = "mlflow.note.content"
# MLflow 3's UI opens an experiment without this tag in its GenAI view ("Evaluation runs"):
# experiments the operator creates are for training, unless the spec's tags say otherwise.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_EXPERIMENT_KIND = "custom_model_development"


def _operator_keys_refused(tags: dict[str, str]) -> dict[str, str]:
    """Spec tags cannot forge what only the operator writes: ownership and audit tags."""
    taken = sorted(k for k in tags if k.startswith(RESERVED_TAG_PREFIX) or k in OWNERSHIP_TAGS)
    if taken:
        raise ValueError(f"tag keys {taken} are written by the operator only (keys under {RESERVED_TAG_PREFIX} "
                         f"and {', '.join(OWNERSHIP_TAGS)})")
    return tags


def _quotable(name: str) -> str:
    """MLflow's filter grammar has no escapes: a name with both quote kinds cannot be searched for."""
    if "'" in name and '"' in name:
        raise ValueError(f"name {name!r} contains both kinds of quote (' and \"); MLflow's search filters "
                         "cannot quote it")
    return name


# A spec's tags for an MLflow entity; and a name of one, as MLflow's filters can search for it.
SpecTags = Annotated[dict[str, str], AfterValidator(_operator_keys_refused)]
MlflowName = Annotated[str, AfterValidator(_quotable)]


class Model(BaseModel):
    """Base for spec models: camelCase aliases as in the CRDs, unknown fields ignored."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class SecretRef(Model):
    name: str


class TrackingSpec(Model):
    uri: str | None = None
    secret_ref: SecretRef | None = Field(default=None, alias="secretRef")


class ObjectIdentity(Model):
    """Who an MLflow entity belongs to, as written in its ownership tags."""

    kind: str
    namespace: str
    name: str
    uid: str

    @classmethod
    def from_body(cls, body: Any) -> "ObjectIdentity":
        metadata = body["metadata"]
        return cls(kind=body["kind"], namespace=metadata["namespace"], name=metadata["name"], uid=metadata["uid"])

    def tags(self) -> dict[str, str]:
        return {TAG_NAMESPACE: self.namespace, TAG_NAME: self.name, TAG_UID: self.uid, TAG_KIND: self.kind}


# --------------------------------------------------------------------------- status


class StatusModel(BaseModel):
    """Base for status models: the CRD's camelCase names, Python names in code. What a read
    holds that the model does not know (a field an older operator wrote) is ignored, and
    every field has a default, so that any status the API server let through can be read
    (handlers filter events on it). A model built with some fields is a patch of those
    fields only (Context.record)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    def as_patch(self) -> dict[str, Any]:
        """The fields this model was built with, as a JSON merge patch (None removes one)."""
        return self.model_dump(by_alias=True, exclude_unset=True, mode="json")


class Status(StatusModel):
    """What every kind's status has: the generation its conditions are about, and the
    conditions (written by the handlers, from the outcome)."""

    observed_generation: int | None = None
    conditions: list[dict[str, Any]] = Field(default_factory=list)

    @classmethod
    def of(cls, body: Any) -> Self:
        """The status of an object's body (a kopf body, a read, a watch event)."""
        return cls.model_validate(dict((body or {}).get("status") or {}))

    def condition(self, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == type_), None)

    def is_true(self, type_: str) -> bool:
        found = self.condition(type_)
        return found is not None and found.get("status") == "True"


class TrackedStatus(Status):
    """Every kind's status: the tracking server the object is bound to, and its link in the UI."""

    tracking_uri: str | None = None
    url: str | None = None
