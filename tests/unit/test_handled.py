"""kopf's diff base from the handled generation (decision 0019): what kopf is told was last
handled decides whether the reconcile handler runs, and nothing is written for it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

import kopf

from mlflow_operator.runtime.kopf_adapter import HandledGenerationDiffBase, HandledGenerations, ProgressStorage


def body(generation: int = 1, observed: int | None = None, labels: dict[str, str] | None = None) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": "mlflow.operator.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": "e", "namespace": "ns", "uid": "u1", "generation": generation,
                     "resourceVersion": "7", "labels": labels or {}},
        "spec": {"description": f"generation {generation}"},
    }
    if observed is not None:
        raw["status"] = {"observedGeneration": observed}
    return kopf.Body(cast(kopf.RawBody, raw))


def diff_base() -> tuple[HandledGenerations, HandledGenerationDiffBase]:
    handled = HandledGenerations()
    return handled, HandledGenerationDiffBase(handled)


def test_a_generation_this_process_handled_shows_no_difference():
    handled, storage = diff_base()
    handled.started("u1")
    handled.finished("u1", 1)
    current = body(observed=1)
    assert storage.fetch(body=current) == storage.build(body=current, extra_fields=[("spec",)])


def test_the_essence_is_the_spec_and_filtered_fields_without_status_or_managed_fields():
    _, storage = diff_base()
    current = kopf.Body(cast(kopf.RawBody, {**dict(body(observed=1)), "metadata": {"managedFields": [{"manager": "kubectl"}]}}))
    essence = storage.build(body=current, extra_fields=[("spec",), "status.observedGeneration"])
    assert essence == {"spec": {"description": "generation 1"}, "status": {"observedGeneration": 1}}


def test_a_new_generation_is_a_change_to_handle():
    handled, storage = diff_base()
    handled.finished("u1", 1)
    assert storage.fetch(body=body(generation=2, observed=1)) is None


def test_a_handler_that_raised_leaves_its_generation_unhandled_whatever_status_says():
    handled, storage = diff_base()
    handled.started("u1")  # the reconcile wrote status (observedGeneration 1), then raised
    assert storage.fetch(body=body(observed=1)) is None


def test_after_a_restart_status_says_which_generation_was_handled():
    _, storage = diff_base()
    assert storage.fetch(body=body(observed=1)) is not None
    assert storage.fetch(body=body(generation=2, observed=1)) is None
    assert storage.fetch(body=body()) is None  # never reconciled: created


def test_a_label_change_of_a_handled_object_is_no_change():
    handled, storage = diff_base()
    handled.finished("u1", 1)
    relabelled = body(observed=1, labels={"team": "b"})
    assert storage.fetch(body=relabelled) == storage.build(body=relabelled)


def test_storing_what_was_handled_writes_nothing():
    _, storage = diff_base()
    patch = kopf.Patch()
    storage.store(body=body(observed=1), patch=patch, essence=storage.build(body=body(observed=1)))
    assert not patch


def test_a_forgotten_object_is_judged_by_its_status_again():
    handled, storage = diff_base()
    handled.started("u1")
    handled.forget("u1")
    assert storage.fetch(body=body(observed=1)) is not None


def run_change_handler(monkeypatch, reconcile) -> HandledGenerations:
    from mlflow_operator.handlers import common

    handled = HandledGenerations()
    monkeypatch.setattr(common, "reconcile_and_report", reconcile)
    with contextlib.suppress(kopf.TemporaryError):  # kopf would retry it
        asyncio.run(common.handle_change(cast(Any, None), body(generation=3), {common.HANDLED: handled}, logging.getLogger(), 0))
    return handled


def test_a_change_handler_that_returns_has_handled_its_generation(monkeypatch):
    async def reconciled(*args: Any, **kwargs: Any) -> None:
        return None

    handled = run_change_handler(monkeypatch, reconciled)
    assert handled.handled(body(generation=3))


def test_a_change_handler_that_raises_leaves_its_generation_to_kopfs_retry(monkeypatch):
    async def outage(*args: Any, **kwargs: Any) -> None:
        raise kopf.TemporaryError("MLflow call failed, will retry", delay=2)

    handled = run_change_handler(monkeypatch, outage)
    assert not handled.handled(body(generation=3, observed=3))


PREFIX = "mlflow.operator.dev"


def progress_body(annotations: dict[str, str] | None = None) -> kopf.Body:
    return kopf.Body({"metadata": {"name": "e", "namespace": "ns", "uid": "u1", "annotations": annotations or {}}})


def test_a_handler_that_succeeds_at_once_leaves_no_progress_to_write():
    storage = ProgressStorage(prefix=PREFIX)
    patch, current = kopf.Patch(), progress_body()
    storage.store(key=kopf.HandlerId("reconcile"), record={"started": "now", "success": True}, body=current,
                  patch=patch)
    storage.purge(key=kopf.HandlerId("reconcile"), body=current, patch=patch)
    assert patch == {}


def test_a_kept_record_is_written_with_kopfs_marker():
    storage = ProgressStorage(prefix=PREFIX)
    patch = kopf.Patch()
    storage.store(key=kopf.HandlerId("reconcile"), record={"started": "now", "retries": 1, "delayed": "later"},
                  body=progress_body(), patch=patch)
    assert set(patch["metadata"]["annotations"]) == {f"{PREFIX}/reconcile", f"{PREFIX}/kopf-managed"}


def test_the_record_of_a_retry_that_succeeded_is_removed():
    storage = ProgressStorage(prefix=PREFIX)
    current = progress_body({f"{PREFIX}/reconcile": "{}", f"{PREFIX}/kopf-managed": "yes"})
    patch = kopf.Patch()
    storage.store(key=kopf.HandlerId("reconcile"), record={"success": True}, body=current, patch=patch)
    storage.purge(key=kopf.HandlerId("reconcile"), body=current, patch=patch)
    assert patch == {"metadata": {"annotations": {f"{PREFIX}/reconcile": None}}}
