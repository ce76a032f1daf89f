"""What the operator knows about Jobs and pods, without the Kubernetes client's types.

The gateway (gateways/kubernetes.py) turns V1Job and V1Pod into these snapshots, as
tracking/entities.py does for MLflow, so that logic/ and the reconcilers work with plain values and
unit tests build them directly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

# Set by the Job controller on every pod of an Indexed Job: its completion index (a
# distributed run's node rank).
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class JobSnapshot:
    """A Job's identity, bookkeeping and progress."""

    uid: str
    # The uid in its controller ownerReference (the one that may act on it), if any.
    controller_uid: str | None
    name: str = ""
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    active: int = 0
    ready: int = 0
    succeeded: int = 0
    failed: int = 0
    # (type, reason, message) of a final Complete/Failed condition that is True.
    finished: tuple[str, str, str] | None = None
    start_time: dt.datetime | None = None
    completion_time: dt.datetime | None = None
    # Being deleted (its finalizer keeps it until the outcome is recorded).
    deleting: bool = False
    finalizers: tuple[str, ...] = ()
    # Pods the Job runs to completion (a distributed run's nodes), and whether it is held
    # (spec.suspend, set by whoever created it or by a queue such as Kueue).
    completions: int = 1
    suspended: bool = False
    # An Indexed Job's failed indexes (ranks) as the Job controller writes them ("1,3-5").
    failed_indexes: str = ""

    @property
    def ended(self) -> bool:
        """Nothing more will happen in this Job: it finished, or it is being deleted."""
        return self.finished is not None or self.deleting

    def controlled_by(self, uid: str) -> bool:
        """Whether `uid` is its controller. Another ownerReference, which anyone who may
        create the Job can add, makes no claim on it."""
        return self.controller_uid == uid


@dataclass(frozen=True)
class ContainerExit:
    container: str
    exit_code: int
    reason: str


@dataclass(frozen=True)
class ContainerImage:
    name: str
    image: str
    # As the node resolved it (container status imageID), e.g. repo@sha256:...; "" before it runs.
    image_id: str


@dataclass(frozen=True)
class PodSnapshot:
    name: str
    # The uid in its controller ownerReference: the Job that made it.
    controller_uid: str | None = None
    # Containers that terminated with a non-zero exit code.
    failed_containers: tuple[ContainerExit, ...] = ()
    node: str | None = None
    created: str | None = None  # RFC 3339, sorts in time order
    containers: tuple[ContainerImage, ...] = ()
    # An Indexed Job's pod: its completion index (a distributed run's node rank).
    completion_index: int | None = None
