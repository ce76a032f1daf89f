"""Each way the operator relies on kopf beyond its public API (runtime/kopf_adapter.py), pinned
against the installed kopf: a kopf upgrade that changes one fails here, not in a cluster
(docs/kopf-upgrade.md)."""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import logging
import re
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
from kopf._cogs.aiokits import aiotoggles
from kopf._cogs.structs import diffs
from kopf._core.actions import execution
from kopf._core.engines import peering, posting
from kopf._core.intents import causes

from mlflow_operator.runtime import kopf_adapter
from mlflow_operator.runtime.kopf_adapter import HandledGenerationDiffBase, HandledGenerations, ProgressStorage

CONSTRAINTS = Path(__file__).resolve().parents[2] / "constraints.txt"
FINALIZER = "mlflow.operator.dev/finalizer"


def body(generation: int, observed: int | None = None) -> kopf.Body:
    raw: dict[str, Any] = {"metadata": {"name": "e", "namespace": "ns", "uid": "u1", "generation": generation},
                           "spec": {"description": f"generation {generation}"}}
    if observed is not None:
        raw["status"] = {"observedGeneration": observed}
    return kopf.Body(cast(kopf.RawBody, raw))


def cause_for(storage: HandledGenerationDiffBase, current: kopf.Body, initial: bool) -> kopf.Reason:
    old = storage.fetch(body=current)
    new = storage.build(body=current)
    diff = diffs.diff(old, new) if old is not None else None
    return causes.detect_changing_cause(
        finalizer=FINALIZER, raw_event={"type": "MODIFIED", "object": cast(kopf.RawBody, dict(current))}, body=current, old=old, new=new,
        diff=diff, initial=initial, logger=logging.getLogger("test"), indices={}, memo=kopf.Memo(),
        resource=kopf.Resource("mlflow.operator.dev", "v1alpha1", "experiments"), patch=kopf.Patch()).reason


def test_the_pinned_kopf_is_the_one_installed():
    pinned = re.search(r"^kopf==(\S+)$", CONSTRAINTS.read_text(), re.M)
    assert pinned is not None
    assert kopf.__version__ == pinned.group(1), "a new kopf: go through docs/kopf-upgrade.md, then re-pin"


def test_an_unhandled_generation_is_reported_as_a_creation_even_after_an_earlier_one_was_handled():
    handled = HandledGenerations()
    handled.finished("u1", 1)
    storage = HandledGenerationDiffBase(handled)
    assert cause_for(storage, body(generation=2, observed=1), initial=False) == kopf.Reason.CREATE


def test_a_handled_generation_seen_first_at_start_up_is_reported_as_a_resume():
    storage = HandledGenerationDiffBase(HandledGenerations())
    assert cause_for(storage, body(generation=3, observed=3), initial=True) == kopf.Reason.RESUME


def test_a_handled_generation_seen_again_is_nothing_to_do():
    storage = HandledGenerationDiffBase(HandledGenerations())
    assert cause_for(storage, body(generation=3, observed=3), initial=False) == kopf.Reason.NOOP


def test_the_change_handler_is_registered_for_creation_and_resume_only():
    registry = kopf.OperatorRegistry()

    async def changed(**_: Any) -> None:
        return None

    kopf_adapter.register_change_handler(registry, ("mlflow.operator.dev", "v1alpha1", "experiments"), changed)
    handlers = registry._changing.get_all_handlers()  # noqa: SLF001 - what kopf would call
    # kopf's resume handler: no reason of its own, called for the first sight of an object.
    assert sorted((str(handler.reason), handler.initial) for handler in handlers) == [
        ("None", True), ("create", None)]


def test_kopfs_own_progress_storage_keeps_its_marker_when_a_record_is_purged():
    storage = kopf.AnnotationsProgressStorage(prefix="mlflow.operator.dev")
    patch = kopf.Patch()
    storage.store(key=kopf.HandlerId("reconcile"), record={"started": "x"}, body=body(1), patch=patch)
    storage.purge(key=kopf.HandlerId("reconcile"), body=body(1), patch=patch)
    annotations = dict(patch["metadata"]["annotations"])
    assert annotations.get("mlflow.operator.dev/kopf-managed") == "yes"


def test_the_operators_progress_storage_drops_the_marker_left_alone():
    storage = ProgressStorage(prefix="mlflow.operator.dev")
    patch = kopf.Patch()
    storage.store(key=kopf.HandlerId("reconcile"), record={"started": "x"}, body=body(1), patch=patch)
    storage.purge(key=kopf.HandlerId("reconcile"), body=body(1), patch=patch)
    assert "mlflow.operator.dev/kopf-managed" not in ((patch.get("metadata") or {}).get("annotations") or {})


def test_kopf_words_a_handlers_success_as_the_log_filter_expects():
    assert 'logger.info(f"{handler} succeeded.")' in inspect.getsource(execution)

    def job(**_: Any) -> None:
        return None

    registry = kopf.OperatorRegistry()
    kopf.on.event("batch", "v1", "jobs", id="job", registry=registry)(job)
    kopf.timer("batch", "v1", "jobs", id="refresh", interval=1, registry=registry)(job)
    words = {f"{handler} succeeded." for handler in registry._watching.get_all_handlers()}  # noqa: SLF001
    words |= {f"{handler} succeeded." for handler in registry._spawning.get_all_handlers()}  # noqa: SLF001
    assert words == {"Handler 'job' succeeded.", "Timer 'refresh' succeeded."}
    assert words <= kopf_adapter.ROUTINE_SUCCESSES


def test_the_log_filter_drops_routine_successes_and_keeps_the_rest():
    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)

    assert not kopf_adapter.drop_routine_successes(record("Handler 'job' succeeded."))
    assert kopf_adapter.drop_routine_successes(record("Handler 'reconcile' succeeded."))


def kopf_pauses(peers: dict[str, dict[str, Any]], identity: str, priority: int) -> bool:
    """What kopf itself decides for this replica, given the peering object's status."""
    settings = kopf.OperatorSettings()
    settings.peering.name = "mlflow-operator"
    settings.peering.priority = priority
    event: Any = {"type": "MODIFIED", "object": {"metadata": {"name": "mlflow-operator"}, "status": peers}}

    async def decide() -> bool:
        toggle = aiotoggles.Toggle(False)
        woken = asyncio.Event()
        woken.set()  # kopf then re-checks at the next event instead of sleeping until a peer expires
        await peering.process_peering_event(
            raw_event=event, namespace=None, resource=kopf.Resource("kopf.dev", "v1", "clusterkopfpeerings"),
            identity=peering.Identity(identity), settings=settings, autoclean=False, conflicts_found=toggle,
            stream_pressure=woken)
        return toggle.is_on()

    return asyncio.run(decide())


def record(seconds_ago: float, priority: int, lifetime: int | None = 60) -> dict[str, Any]:
    now = dt.datetime.now(dt.timezone.utc)
    found: dict[str, Any] = {"priority": priority, "lastseen": (now - dt.timedelta(seconds=seconds_ago)).isoformat()}
    if lifetime is not None:
        found["lifetime"] = lifetime
    return found


@pytest.mark.parametrize("peers", [
    {"me": record(1, 100)},
    {"me": record(1, 100), "other": record(5, 200)},
    {"me": record(1, 200), "other": record(5, 100)},
    {"me": record(1, 100), "other": record(5, 100)},
    {"me": record(1, 100), "other": record(61, 200, lifetime=60)},
    {"me": record(1, 100), "other": record(1, 200, lifetime=0)},
    {"me": record(1, 100), "other": record(30, 200, lifetime=None)},
], ids=["alone", "higher", "lower", "same", "expired", "said-goodbye", "default-lifetime"])
def test_the_drift_passes_stand_by_exactly_when_kopf_pauses_this_replica(peers: dict[str, dict[str, Any]]):
    priority = peers["me"]["priority"]
    now = dt.datetime.now(dt.timezone.utc)
    assert kopf_adapter.standing_by(peers, "me", priority, now) == kopf_pauses(peers, "me", priority)


def test_kopf_takes_the_peer_identity_as_a_string():
    assert peering.Identity("me") == "me"
    assert "identity" in inspect.signature(kopf.run).parameters
    assert not hasattr(kopf, "Identity") or kopf.Identity is peering.Identity


def test_an_event_posted_from_a_task_a_handler_started_goes_to_kopfs_queue_of_that_handler():
    async def scenario() -> list[Any]:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        posting.event_queue_var.set(queue)
        posting.event_queue_loop_var.set(asyncio.get_running_loop())
        posting.settings_var.set(kopf.OperatorSettings())

        async def drift_pass() -> None:
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "uid": "u"}}
            kopf.event(kopf.Body(cast(kopf.RawBody, pod)),
                       type="Normal", reason="Drift", message="restored")

        await asyncio.create_task(drift_pass())
        return [queue.get_nowait() for _ in range(queue.qsize())]

    posted = asyncio.run(scenario())
    assert [(event.type, event.reason) for event in posted] == [("Normal", "Drift")]
