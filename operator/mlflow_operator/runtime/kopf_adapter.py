"""Every use of kopf beyond its public API, in one place, each pinned by a test against the
pinned kopf version (tests/unit/test_kopf_adapter.py; docs/kopf-upgrade.md says what to
check when kopf changes):

1. The diff base is not a stored copy but the handled generation (decision 0019): kopf
   reports an object whose generation is not handled as a *creation* and a handled one, on
   first sight, as a *resume*, so the change handlers are registered for create and resume
   only (an update handler could never fire).
2. The progress annotations drop kopf's `kopf-managed` marker once no record is kept.
3. kopf's "Handler '...' succeeded." log lines for routine handlers are filtered by text.
4. A replica stands by for a peer as kopf's peering decides it (its record's fields and
   its rule), for work that runs outside kopf's handlers (the drift passes).
5. This process's peer identity is passed to `kopf.run` (kopf's `Identity`, not exported).
6. Events posted from a task started by a handler go through kopf's per-task event queue,
   which the task inherits (the drift passes post through it).

Which generation of each object the change handlers have handled, in place of kopf's
last-handled annotation (decision 0019):

kopf decides between create, update, resume and nothing by comparing an object with a
stored copy of what it last handled. Its default store is an annotation, written by a PATCH
after every successful change handler: one more write per object and generation, and one
more watch event for every watcher. The operator already says what it handled: each
reconcile writes `status.observedGeneration`. Here kopf is told "handled" when the change
handler of this process returned for the object's generation, or, for an object this
process has not handled yet (after a restart, on a standby taking over), when status
observed that generation. Nothing is written.

kopf's progress records (a handler's retries) stay in annotations, but a handler that
succeeds at once leaves none, so nothing else is written for it either.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import uuid
from typing import Any, Iterable, Mapping, cast

import kopf

from mlflow_operator.logic import timestamps


class HandledGenerations:
    """Per object (uid): the generation this process's change handler last returned for,
    or None while one runs or after one failed (kopf retries it)."""

    def __init__(self) -> None:
        self._handled: dict[str, int | None] = {}

    def started(self, uid: str) -> None:
        self._handled[uid] = None

    def finished(self, uid: str, generation: int | None) -> None:
        self._handled[uid] = generation

    def forget(self, uid: str) -> None:
        self._handled.pop(uid, None)

    def handled(self, body: Any) -> bool:
        metadata = body.get("metadata") or {}
        generation = metadata.get("generation")
        if generation is None:
            return False
        uid = metadata.get("uid")
        done = self._handled[uid] if uid in self._handled else (body.get("status") or {}).get("observedGeneration")
        return done == generation


class HandledGenerationDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base without a stored copy: for a handled generation, the object as it is
    (no difference: nothing to do, or resume on the first listing); otherwise none (a
    change to handle: the one reconcile handler runs for create, update and resume alike).
    Labels and annotations are not changes here: only a new generation (the spec) is."""

    def __init__(self, handled: HandledGenerations) -> None:
        super().__init__()
        self.handled = handled

    def build(self, *, body: kopf.Body,
              extra_fields: Iterable[str | tuple[str, ...] | list[str] | None] | None = None) -> kopf.BodyEssence:
        """The spec (and the fields handlers filter on), not copied. Which generation was
        handled decides (fetch): the essence only has to equal itself. kopf's default deep-
        copies the whole body, managedFields and status included, on every event."""
        essence: dict[str, Any] = {"spec": body.get("spec") or {}}
        for field in extra_fields or ():
            path = tuple(field.split(".")) if isinstance(field, str) else tuple(field or ())
            value: Any = body
            for part in path:
                value = value.get(part) if isinstance(value, Mapping) else None
            target = essence
            for part in path[:-1]:
                target = target.setdefault(part, {})
            if path:
                target[path[-1]] = value
        return cast(kopf.BodyEssence, essence)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return self.build(body=body) if self.handled.handled(body) else None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        """Nothing to write: the reconcile wrote status.observedGeneration."""


class ProgressStorage(kopf.AnnotationsProgressStorage):
    """kopf's progress annotations, whose `kopf-managed` marker (telling other kopf-based
    operators to ignore them) is written only beside a record that is kept. kopf adds the
    marker when it records a handler's start and keeps it when the handler succeeded and
    its record is dropped: a PATCH of the marker alone, once per object."""

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        super().purge(key=key, body=body, patch=patch)
        metadata = patch.get("metadata") or {}
        annotations = metadata.get("annotations") or {}
        marker = f"{self.prefix}/kopf-managed"
        if marker not in annotations or any(k != marker and k.startswith(f"{self.prefix}/") for k in annotations):
            return
        del annotations[marker]
        if not annotations:
            del metadata["annotations"]
        if not metadata:
            del patch["metadata"]


# --------------------------------------------------------------------------- change handlers

def register_change_handler(registry: kopf.OperatorRegistry, resource: tuple[str, str, str], fn: Any) -> None:
    """Register `fn` as the one change handler of `resource` (id "reconcile"). With the
    handled-generation diff base, kopf reports every unhandled generation as a creation and a
    handled one, when first seen, as a resume: create and resume are the only causes."""
    kopf.on.resume(*resource, id="reconcile", registry=registry)(fn)
    kopf.on.create(*resource, id="reconcile", registry=registry)(fn)


# --------------------------------------------------------------------------- log lines

# kopf logs every successful call of a handler. For these, called on every watch event and
# every timer tick, that is a line per object per interval saying nothing: what they did (if
# anything) is logged by the reconcile itself. kopf words them f"{handler} succeeded.".
ROUTINE_SUCCESSES = frozenset({
    "Handler 'job' succeeded.", "Handler 'watch' succeeded.", "Handler 'credentials' succeeded.",
    "Handler 'trial' succeeded.",
    "Timer 'refresh' succeeded.",
})


def drop_routine_successes(record: logging.LogRecord) -> bool:
    return record.msg not in ROUTINE_SUCCESSES


def quiet_routine_successes() -> None:
    logging.getLogger("kopf.objects").addFilter(drop_routine_successes)


# --------------------------------------------------------------------------- peering

# kopf's default lifetime of a peer's record, in seconds, when the record has none.
DEFAULT_PEER_LIFETIME = 60


def standing_by(peers: Mapping[str, Any], identity: str, priority: int, now: dt.datetime) -> bool:
    """Whether kopf keeps this replica on standby, decided from its peering object's status
    (identity -> record) as kopf decides it: another live peer has a higher priority, or the
    same one (kopf then pauses every peer that shares it)."""
    for peer, record in peers.items():
        if peer == identity or not isinstance(record, Mapping):
            continue
        if _alive(record, now) and int(record.get("priority") or 0) >= priority:
            return True
    return False


def _alive(record: Mapping[str, Any], now: dt.datetime) -> bool:
    try:
        last_seen = timestamps.parse(record.get("lastseen"))
        lifetime = dt.timedelta(seconds=int(record.get("lifetime", DEFAULT_PEER_LIFETIME)))
    except (TypeError, ValueError):
        return True  # a record kopf wrote but this cannot read: assume the peer is there
    return last_seen is None or last_seen + lifetime > now


def peer_identity() -> str:
    """This process among kopf's peers, as kopf names it: POD_ID (the chart sets the pod's
    name), else the host, the process and a random part."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    return f"{os.uname().nodename}/{os.getpid()}/{uuid.uuid4().hex[:6]}"


def run(*, identity: str, **kwargs: Any) -> None:
    """`kopf.run` with this process's peer identity: kopf types it as its `Identity`, a
    NewType of str that kopf does not export."""
    kopf.run(identity=identity, **kwargs)  # type: ignore[arg-type]
