"""The Experiments' drift checks share one paged search per namespace and server: MLflow
calls grow with pages, not with objects, and an experiment changed by hand is still seen.

The in-process MLflow fake (tests/fakes.py) counts searches and pages by a chosen size, which a
real server would need hundreds of experiments for; tests/e2e/test_experiment.py runs the
drift checks against the sandbox's MLflow server."""

from __future__ import annotations

import asyncio
import dataclasses

from mlflow_operator.caches import Caches
from mlflow_operator.caches.pages import ExperimentPages
from mlflow_operator.logic import signing
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.reconcilers.experiment import experiment_in_sync
from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.tracking.entities import ExperimentInfo, TrackingTarget

from fakes import TEST_KEYS, FakeKube, FakeMlflow, Writes

TARGET = TrackingTarget("http://mlflow:5000")
NS = "team-a"


def owned(i: int, **tags: str) -> ExperimentInfo:
    ownership = {"k8s.namespace": NS, "k8s.name": f"e{i}", "k8s.uid": f"uid-{i}", "k8s.kind": "Experiment"}
    signed = signing.signed(TEST_KEYS, TARGET.uri, "experiment", str(i), ownership)
    return ExperimentInfo(str(i), f"{NS}/e{i}", "active", None, {**signed, **tags})


def world(n: int, page_size: int = 1000) -> tuple[FakeMlflow, Services]:
    writes = Writes()
    mlflow = FakeMlflow(writes)
    mlflow.page_size = page_size
    for i in range(n):
        mlflow.experiments[str(i)] = owned(i, team="a")
    services = Services(OperatorConfig(default_tracking_uri=TARGET.uri, ownership_keys=TEST_KEYS), mlflow, FakeKube(writes),
                        caches=Caches(experiment_pages=ExperimentPages(max_age_seconds=30)))
    return mlflow, services


def body(i: int) -> dict:
    return {"kind": "Experiment",
            "metadata": {"namespace": NS, "name": f"e{i}", "uid": f"uid-{i}", "generation": 1},
            "spec": {"tags": {"team": "a"}},
            "status": {"experimentId": str(i), "trackingUri": TARGET.uri, "observedGeneration": 1,
                       "managedTags": ["team"], "conditions": [{"type": "Ready", "status": "True"}]}}


def test_250_drift_checks_make_one_paged_search_of_three_pages():
    mlflow, services = world(250, page_size=100)

    async def check_all() -> list[bool]:
        return [await experiment_in_sync(services, body(i)) for i in range(250)]

    assert all(asyncio.run(check_all()))
    assert mlflow.calls == ["search_experiments"] * 3


def test_an_experiment_changed_by_hand_is_not_in_sync():
    mlflow, services = world(2)
    mlflow.experiments["1"] = dataclasses.replace(mlflow.experiments["1"], tags={**mlflow.experiments["1"].tags,
                                                                                 "team": "b"})
    assert asyncio.run(experiment_in_sync(services, body(0)))
    assert not asyncio.run(experiment_in_sync(services, body(1)))


def test_an_experiment_deleted_or_untagged_by_hand_is_not_in_sync():
    mlflow, services = world(3)
    mlflow.experiments["1"] = dataclasses.replace(mlflow.experiments["1"], lifecycle_stage="deleted")
    mlflow.experiments["2"] = dataclasses.replace(mlflow.experiments["2"], tags={"team": "a"})
    assert not asyncio.run(experiment_in_sync(services, body(1)))
    assert not asyncio.run(experiment_in_sync(services, body(2)))


def test_an_experiment_not_ready_is_left_to_a_full_reconcile():
    _, services = world(1)
    stalled = body(0)
    stalled["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    assert not asyncio.run(experiment_in_sync(services, stalled))


def test_the_page_is_searched_again_once_it_is_older_than_its_age_limit():
    mlflow, _ = world(1)
    now = [0.0]
    pages = ExperimentPages(max_age_seconds=5, clock=lambda: now[0])
    asyncio.run(pages.experiments(mlflow, TARGET, NS))
    now[0] = 4.0
    asyncio.run(pages.experiments(mlflow, TARGET, NS))
    now[0] = 6.0
    asyncio.run(pages.experiments(mlflow, TARGET, NS))
    assert mlflow.calls == ["search_experiments"] * 2
