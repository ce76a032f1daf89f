"""Which generation of each object the change handlers have handled, in place of kopf's
last-handled annotation (decision 0019).

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

from typing import Any, Iterable, Mapping, cast

import kopf


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
