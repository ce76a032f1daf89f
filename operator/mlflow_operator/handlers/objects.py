"""What the operator keeps in memory per object (kopf's memo): one reconcile at a time, its
last status write, its timer's phase; and the services the handlers share."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import kopf

from mlflow_operator.api.common import Status
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.runtime.kopf_adapter import HandledGenerations


def services_of(memo: Any) -> Services:
    return memo["services"]

# The memo key of the HandledGenerations that kopf's diff base reads (runtime/process.py).
HANDLED = "handled"

@dataclass
class ObjectState:
    """What the operator keeps in memory per object: one reconcile at a time (shared by its
    change handlers, its timer and handlers of other resources, e.g. a Job's events), and
    its own last status write: its resourceVersion and a digest of the status it left."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    written_version: str | None = None
    written_status: int | None = None
    # Whether this object's timer has been shifted by a random part of its interval.
    dephased: bool = False
    # Its deletion step is done: a reconcile that waited for the lock meanwhile (a Job's
    # event, with the run as last seen) must not act on it.
    deleted: bool = False

def object_state(memo: Any, uid: str) -> ObjectState:
    objects: dict[str, ObjectState] = memo["objects"]
    state = objects.get(uid)
    if state is None:
        state = objects[uid] = ObjectState()
    return state

def object_lock(memo: Any, uid: str) -> asyncio.Lock:
    return object_state(memo, uid).lock

def forget_object(memo: Any, uid: str) -> None:
    memo["objects"].pop(uid, None)
    handled: HandledGenerations | None = memo.get(HANDLED)
    if handled is not None:
        handled.forget(uid)
    services = services_of(memo)
    services.caches.handled_jobs.forget(uid)
    services.caches.watched.open_training_runs.put(uid, None)

async def dephase(memo: Any, uid: str, interval: float, stopped: kopf.DaemonStopped) -> bool:
    """Objects seen at once (all of them, when the operator starts) would have their timers
    fire together every interval: the first tick of each waits a random part of it (instead
    of a whole interval), and later ticks keep that phase. True if the timer was stopped
    meanwhile (the object is being deleted): the tick does nothing."""
    state = object_state(memo, uid)
    if not state.dephased:
        state.dephased = True
        await stopped.wait(random.uniform(0, interval))
    return bool(stopped)

def drift_check_due(body: Any, memo: Any) -> bool:
    """The timer leaves objects alone while a change handler owns them."""
    if body["metadata"].get("deletionTimestamp"):
        return False
    if Status.of(body).observed_generation != body["metadata"].get("generation"):
        return False
    return not object_lock(memo, body["metadata"]["uid"]).locked()
