"""Types shared by the kinds: API coordinates, tracking settings, ownership tags."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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

# MLflow's own tag for an entity's description ("note").
NOTE_TAG = "mlflow.note.content"


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
