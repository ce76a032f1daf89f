"""One drift pass per kind goes through the watch cache: it reconciles only the objects whose
MLflow entity differs from what they declare, and leaves alone those a change handler owns.

MLflow is the in-process fake (tests/fakes.py), which counts searches; tests/e2e/test_experiment.py
and test_registeredmodel.py show drift restored against the sandbox's MLflow server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

from mlflow_operator.caches import Caches
from mlflow_operator.caches.pages import ExperimentPages
from mlflow_operator.caches.watches import WatchCache, Watched
from mlflow_operator.handlers.drift import drifted_objects
from mlflow_operator.handlers.experiment import EXPERIMENT
from mlflow_operator.handlers.objects import object_lock
from mlflow_operator.handlers.synced import synced_view
from mlflow_operator.logic import signing
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.reconcilers.experiment import experiment_in_sync
from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.tracking.entities import ExperimentInfo, TrackingTarget

from fakes import TEST_KEYS, FakeKube, FakeMlflow, Writes

TARGET = TrackingTarget("http://mlflow:5000")
NS = "team-a"


def owned(i: int) -> ExperimentInfo:
    ownership = {"k8s.namespace": NS, "k8s.name": f"e{i}", "k8s.uid": f"uid-{i}", "k8s.kind": "Experiment"}
    signed = signing.signed(TEST_KEYS, TARGET.uri, "experiment", str(i), ownership)
    return ExperimentInfo(str(i), f"{NS}/e{i}", "active", None, {**signed, "team": "a"})


def body(i: int) -> dict[str, Any]:
    return {"kind": "Experiment",
            "metadata": {"namespace": NS, "name": f"e{i}", "uid": f"uid-{i}", "generation": 1,
                         "resourceVersion": "7", "managedFields": [{"manager": "kubectl"}]},
            "spec": {"tags": {"team": "a"}},
            "status": {"experimentId": str(i), "trackingUri": TARGET.uri, "observedGeneration": 1,
                       "managedTags": ["team"], "conditions": [{"type": "Ready", "status": "True"}]}}


def world(bodies: list[dict[str, Any]], page_size: int = 1000) -> tuple[FakeMlflow, dict[str, Any]]:
    writes = Writes()
    mlflow = FakeMlflow(writes)
    mlflow.page_size = page_size
    cache: WatchCache[tuple[str, str], dict[str, Any]] = WatchCache()
    for b in bodies:
        mlflow.experiments[b["status"]["experimentId"]] = owned(int(b["status"]["experimentId"]))
        cache.put((NS, b["metadata"]["name"]), synced_view(b))
    services = Services(OperatorConfig(default_tracking_uri=TARGET.uri, ownership_keys=TEST_KEYS), mlflow, FakeKube(writes),
                        caches=Caches(watched=Watched(experiments=cache),
                                      experiment_pages=ExperimentPages(max_age_seconds=30)))
    return mlflow, {"services": services, "objects": {}}


def drifted_names(memo: dict[str, Any]) -> list[str]:
    found = asyncio.run(drifted_objects(EXPERIMENT, memo, experiment_in_sync))
    return sorted(b["metadata"]["name"] for b in found)


def test_a_pass_over_250_objects_in_sync_reconciles_none_and_makes_one_paged_search():
    mlflow, memo = world([body(i) for i in range(250)], page_size=100)
    assert drifted_names(memo) == []
    assert mlflow.calls == ["search_experiments"] * 3


def test_a_pass_reconciles_only_the_experiment_changed_by_hand():
    mlflow, memo = world([body(0), body(1)])
    mlflow.experiments["1"] = dataclasses.replace(mlflow.experiments["1"], tags={**mlflow.experiments["1"].tags,
                                                                                 "team": "b"})
    assert drifted_names(memo) == ["e1"]


def test_a_pass_leaves_alone_an_object_being_deleted():
    deleting = body(0)
    deleting["metadata"]["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    mlflow, memo = world([deleting])
    mlflow.experiments.clear()
    assert drifted_names(memo) == []


def test_a_pass_leaves_alone_an_object_whose_new_spec_is_not_reconciled_yet():
    changed = body(0)
    changed["metadata"]["generation"] = 2
    mlflow, memo = world([changed])
    mlflow.experiments.clear()
    assert drifted_names(memo) == []


def test_a_pass_leaves_alone_an_object_being_reconciled():
    mlflow, memo = world([body(0)])
    mlflow.experiments.clear()

    async def while_locked() -> list[dict[str, Any]]:
        async with object_lock(memo, "uid-0"):
            return await drifted_objects(EXPERIMENT, memo, experiment_in_sync)

    assert asyncio.run(while_locked()) == []


def test_the_cached_view_keeps_no_resource_version_or_managed_fields():
    view = synced_view(body(0))
    assert "resourceVersion" not in view["metadata"]
    assert "managedFields" not in view["metadata"]
    assert view["spec"] == {"tags": {"team": "a"}}


def test_the_cached_views_share_their_keys_and_short_strings():
    # Each watch event is parsed anew: without sharing, every view holds its own copies.
    first, second = (synced_view(json.loads(json.dumps(body(n)))) for n in (0, 1))
    assert first["spec"] == second["spec"]
    assert next(iter(first["spec"]["tags"])) is next(iter(second["spec"]["tags"]))
    assert first["metadata"]["namespace"] is second["metadata"]["namespace"]


def test_the_cached_view_is_a_copy():
    source = body(0)
    view = synced_view(source)
    source["spec"]["tags"]["team"] = "b"
    assert view["spec"] == {"tags": {"team": "a"}}
