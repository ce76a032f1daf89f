"""The RegisteredModels' drift checks share one paged search of a namespace's models, and of
their versions many names at a time: MLflow calls grow with pages, not with objects, and a
registry changed by hand is still seen.

The in-process MLflow fake (tests/fakes.py) counts searches and pages by a chosen size, which a
real server would need hundreds of models for; tests/e2e/test_registeredmodel.py runs the
drift checks against the sandbox's MLflow server."""

from __future__ import annotations

import asyncio
import dataclasses

from fakes import FakeKube, FakeMlflow, Writes
from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.api.registeredmodel import RegisteredModelSpec
from mlflow_operator.config import OperatorConfig
from mlflow_operator.logic import registeredmodel as logic
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.reconcilers.registeredmodel import registered_model_in_sync, without_nulls
from mlflow_operator.tracking import ModelVersionInfo, RegisteredModelInfo, TrackingTarget
from mlflow_operator.watched import ModelPages, names_in_filters

TARGET = TrackingTarget("http://mlflow:5000")
NS = "team-a"
SPEC = {"aliases": {"champion": "1"}, "versions": [{"version": "1", "tags": {"validation": "passed"}}]}


def identity(i: int) -> ObjectIdentity:
    return ObjectIdentity(kind="RegisteredModel", namespace=NS, name=f"m{i}", uid=f"uid-{i}")


def spec(i: int) -> dict:
    return {**SPEC, "name": f"{NS}.m{i}"}


def world(n: int, page_size: int = 1000) -> tuple[FakeMlflow, Services]:
    writes = Writes()
    mlflow = FakeMlflow(writes)
    mlflow.page_size = page_size
    for i in range(n):
        name = f"{NS}.m{i}"
        mlflow.models[name] = RegisteredModelInfo(name, "", identity(i).tags(), {"champion": "1"})
        mlflow.versions[name] = [
            ModelVersionInfo(name, "1", "None", "", "models:/m-1", "run1", "READY", tags={"validation": "passed"}),
            ModelVersionInfo(name, "2", "None", "", "models:/m-2", "run2", "READY"),
        ]
    services = Services(OperatorConfig(default_tracking_uri=TARGET.uri), mlflow, FakeKube(writes),  # type: ignore[arg-type]
                        model_pages=ModelPages(max_age_seconds=30))
    return mlflow, services


def body(mlflow: FakeMlflow, i: int) -> dict:
    """The object as its last reconcile left it: status shows the registry as it was then."""
    name = f"{NS}.m{i}"
    desired = logic.desired_model(RegisteredModelSpec.parse(spec(i)), identity(i))
    plan = logic.plan(desired, mlflow.models[name], mlflow.versions[name], logic.Managed())
    status = {**without_nulls(logic.status_view(mlflow.models[name], mlflow.versions[name])),
              **without_nulls(logic.managed_status(plan.managed)),
              "trackingUri": TARGET.uri, "observedGeneration": 1,
              "conditions": [{"type": "Ready", "status": "True"}]}
    return {"kind": "RegisteredModel", "spec": spec(i), "status": status,
            "metadata": {"namespace": NS, "name": f"m{i}", "uid": f"uid-{i}", "generation": 1}}


def in_sync(services: Services, obj: dict) -> bool:
    return asyncio.run(registered_model_in_sync(services, obj))


def test_250_drift_checks_make_three_model_pages_and_one_versions_search():
    mlflow, services = world(250, page_size=100)
    bodies = [body(mlflow, i) for i in range(250)]

    async def check_all() -> list[bool]:
        return [await registered_model_in_sync(services, b) for b in bodies]

    assert all(asyncio.run(check_all()))
    assert mlflow.calls == ["search_registered_models"] * 3 + ["search_model_versions"]


def test_a_version_tag_changed_by_hand_is_not_in_sync():
    mlflow, services = world(2)
    bodies = [body(mlflow, i) for i in range(2)]
    first = mlflow.versions[f"{NS}.m1"][0]
    mlflow.versions[f"{NS}.m1"][0] = dataclasses.replace(first, tags={"validation": "failed"})
    assert in_sync(services, bodies[0])
    assert not in_sync(services, bodies[1])


def test_an_alias_moved_by_hand_is_not_in_sync():
    mlflow, services = world(1)
    obj = body(mlflow, 0)
    mlflow.models[f"{NS}.m0"] = dataclasses.replace(mlflow.models[f"{NS}.m0"], aliases={"champion": "2"})
    assert not in_sync(services, obj)


def test_a_version_registered_since_the_last_reconcile_is_not_in_sync():
    """Status mirrors every version, so a new one needs a reconcile to be shown."""
    mlflow, services = world(1)
    obj = body(mlflow, 0)
    mlflow.versions[f"{NS}.m0"].append(
        ModelVersionInfo(f"{NS}.m0", "3", "None", "", "models:/m-3", "run3", "READY"))
    assert not in_sync(services, obj)


def test_a_model_untagged_or_deleted_by_hand_is_not_in_sync():
    mlflow, services = world(2)
    bodies = [body(mlflow, i) for i in range(2)]
    mlflow.models[f"{NS}.m0"] = dataclasses.replace(mlflow.models[f"{NS}.m0"], tags={})
    del mlflow.models[f"{NS}.m1"]
    assert not in_sync(services, bodies[0])
    assert not in_sync(services, bodies[1])


def test_a_model_not_ready_for_its_generation_is_left_to_a_full_reconcile():
    mlflow, services = world(1)
    obj = body(mlflow, 0)
    obj["metadata"]["generation"] = 2
    assert not in_sync(services, obj)
    assert mlflow.calls == []


def test_version_filters_stay_under_their_length_and_skip_names_no_filter_can_express():
    names = [f"model-{i:03d}" for i in range(100)] + ["""it's "quoted\""""]
    filters = names_in_filters(names, max_chars=200)
    assert all(len(f) <= 200 + len("name IN ()") for f in filters)
    listed = [literal[1:-1] for f in filters for literal in f.removeprefix("name IN (").removesuffix(")").split(", ")]
    assert listed == names[:100]


def test_the_models_are_searched_again_once_the_page_is_older_than_its_age_limit():
    mlflow, _ = world(1)
    now = [0.0]
    pages = ModelPages(max_age_seconds=5, clock=lambda: now[0])
    for moment in (0.0, 4.0, 6.0):
        now[0] = moment
        asyncio.run(pages.models(mlflow, TARGET, NS))  # type: ignore[arg-type]
    assert mlflow.calls == ["search_registered_models", "search_model_versions"] * 2
