"""The RegisteredModels' drift checks share one paged search of a namespace's models, and of
their versions many names at a time: MLflow calls grow with pages, not with objects, and a
registry changed by hand is still seen. After the first pass, a pass reads again only the
versions that changed (by MLflow's timestamps) and those whose tags are declared.

The in-process MLflow fake (tests/fakes.py) counts searches and pages by a chosen size, which a
real server would need hundreds of models for; tests/e2e/test_registeredmodel.py runs the
drift checks against the sandbox's MLflow server."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any, Callable

from mlflow_operator.api.common import ObjectIdentity
from mlflow_operator.api.registeredmodel import RegisteredModelSpec
from mlflow_operator.caches import Caches
from mlflow_operator.caches.pages import RECENT_PAGE_SIZE, ModelPages, names_in_filters
from mlflow_operator.caches.watches import NamespacedWatchCache, Watched
from mlflow_operator.logic import registeredmodel as logic
from mlflow_operator.logic import signing
from mlflow_operator.reconcilers.common import Services
from mlflow_operator.reconcilers.registeredmodel import registered_model_in_sync, without_nulls
from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.tracking.entities import ModelVersionInfo, RegisteredModelInfo, TrackingTarget

from fakes import TEST_KEYS, FakeKube, FakeMlflow, Writes

TARGET = TrackingTarget("http://mlflow:5000")
NS = "team-a"
SPEC = {"aliases": {"champion": "1"}, "versions": [{"version": "1", "tags": {"validation": "passed"}}]}


def identity(i: int) -> ObjectIdentity:
    return ObjectIdentity(kind="RegisteredModel", namespace=NS, name=f"m{i}", uid=f"uid-{i}")


def spec(i: int) -> dict:
    return {**SPEC, "name": f"{NS}.m{i}"}


# By the server's clock (ms): when the fake registry was last written.
WRITTEN = 1_700_000_000_000
PAGE_AGE = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def next_pass(self) -> None:
        self.now += PAGE_AGE


def registered(model: int, version: int) -> int:
    """When a version was registered (server ms): one at a time, before WRITTEN."""
    return WRITTEN - 1_000_000 + model * 1000 + version


def world(n: int, page_size: int = 1000, versions: int = 2) -> tuple[FakeMlflow, Services, Clock]:
    writes = Writes()
    mlflow = FakeMlflow(writes)
    mlflow.page_size = page_size
    for i in range(n):
        name = f"{NS}.m{i}"
        owner = signing.signed(TEST_KEYS, TARGET.uri, "registered-model", name, identity(i).tags())
        mlflow.models[name] = RegisteredModelInfo(name, "", owner, {"champion": "1"},
                                                  last_updated=WRITTEN)
        mlflow.versions[name] = [
            ModelVersionInfo(name, "1", "None", "", "models:/m-1", "run1", "READY", tags={"validation": "passed"},
                             last_updated=registered(i, 1)),
        ] + [ModelVersionInfo(name, str(v), "None", "", f"models:/m-{v}", f"run{v}", "READY",
                              last_updated=registered(i, v)) for v in range(2, versions + 1)]
    clock = Clock()
    services = Services(OperatorConfig(default_tracking_uri=TARGET.uri, ownership_keys=TEST_KEYS), mlflow, FakeKube(writes),
                        caches=Caches(watched=Watched(registered_models=NamespacedWatchCache()),
                                      model_pages=ModelPages(max_age_seconds=PAGE_AGE, full_read_seconds=100 * PAGE_AGE,
                                                             clock=clock, jitter=lambda: 0.0)))
    return mlflow, services, clock


def edit_version(mlflow: FakeMlflow, model: str, version: str, moves: bool, **changes: Any) -> None:
    """Change a version as a hand edit would; `moves`: whether MLflow moves its last_updated
    (a description does, a tag does not)."""
    versions = mlflow.versions[model]
    index = next(i for i, v in enumerate(versions) if v.version == version)
    if moves:
        changes["last_updated"] = WRITTEN + 5000
    versions[index] = dataclasses.replace(versions[index], **changes)


def move_model_stamp(mlflow: FakeMlflow, model: str) -> None:
    mlflow.models[model] = dataclasses.replace(mlflow.models[model], last_updated=WRITTEN + 5000)


def body(mlflow: FakeMlflow, i: int, declared: dict | None = None) -> dict:
    """The object as its last reconcile left it: status shows the registry as it was then."""
    name = f"{NS}.m{i}"
    object_spec = declared or spec(i)
    desired = logic.desired_model(RegisteredModelSpec.parse(object_spec), identity(i))
    plan = logic.plan(desired, mlflow.models[name], mlflow.versions[name], logic.Managed())
    assert not plan.changes
    status = {**without_nulls(logic.status_view(mlflow.models[name], mlflow.versions[name],
                                                frozenset(desired.versions))),
              **without_nulls(logic.managed_status(plan.managed)),
              "trackingUri": TARGET.uri, "observedGeneration": 1,
              "conditions": [{"type": "Ready", "status": "True"}]}
    return {"kind": "RegisteredModel", "spec": object_spec, "status": status,
            "metadata": {"namespace": NS, "name": f"m{i}", "uid": f"uid-{i}", "generation": 1}}


def in_sync(services: Services, obj: dict) -> bool:
    return asyncio.run(registered_model_in_sync(services, obj))


def test_250_drift_checks_make_three_model_pages_and_one_versions_search():
    mlflow, services, _ = world(250, page_size=100)
    bodies = [body(mlflow, i) for i in range(250)]

    async def check_all() -> list[bool]:
        return [await registered_model_in_sync(services, b) for b in bodies]

    assert all(asyncio.run(check_all()))
    assert mlflow.calls == ["search_registered_models"] * 3 + ["search_model_versions"]


def test_a_version_tag_changed_by_hand_is_not_in_sync():
    mlflow, services, _ = world(2)
    bodies = [body(mlflow, i) for i in range(2)]
    first = mlflow.versions[f"{NS}.m1"][0]
    mlflow.versions[f"{NS}.m1"][0] = dataclasses.replace(first, tags={"validation": "failed"})
    assert in_sync(services, bodies[0])
    assert not in_sync(services, bodies[1])


def test_an_alias_moved_by_hand_is_not_in_sync():
    mlflow, services, _ = world(1)
    obj = body(mlflow, 0)
    mlflow.models[f"{NS}.m0"] = dataclasses.replace(mlflow.models[f"{NS}.m0"], aliases={"champion": "2"})
    assert not in_sync(services, obj)


def test_a_version_registered_since_the_last_reconcile_is_not_in_sync():
    """Status mirrors every version, so a new one needs a reconcile to be shown."""
    mlflow, services, _ = world(1)
    obj = body(mlflow, 0)
    mlflow.versions[f"{NS}.m0"].append(
        ModelVersionInfo(f"{NS}.m0", "3", "None", "", "models:/m-3", "run3", "READY"))
    assert not in_sync(services, obj)


def test_a_model_untagged_or_deleted_by_hand_is_not_in_sync():
    mlflow, services, _ = world(2)
    bodies = [body(mlflow, i) for i in range(2)]
    mlflow.models[f"{NS}.m0"] = dataclasses.replace(mlflow.models[f"{NS}.m0"], tags={})
    del mlflow.models[f"{NS}.m1"]
    assert not in_sync(services, bodies[0])
    assert not in_sync(services, bodies[1])


def test_a_model_not_ready_for_its_generation_is_left_to_a_full_reconcile():
    mlflow, services, _ = world(1)
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
    mlflow, _, _ = world(1)
    now = [0.0]
    pages = ModelPages(max_age_seconds=5, full_read_seconds=1000, clock=lambda: now[0])
    for moment in (0.0, 4.0, 6.0):
        now[0] = moment
        asyncio.run(pages.models(mlflow, TARGET, NS))
    assert mlflow.calls.count("search_registered_models") == 2


def two_passes(mlflow: FakeMlflow, services: Services, clock: Clock, bodies: list[dict],
               between: Callable[[], None] = lambda: None) -> list[bool]:
    """A drift pass over `bodies`, `between()`, then the next pass: whether each object is in
    sync on the second. Only the second pass's calls and reads are kept."""

    async def check_all() -> list[bool]:
        return [await registered_model_in_sync(services, b) for b in bodies]

    for b in bodies:
        services.caches.watched.registered_models.put((NS, b["metadata"]["name"]), b)  # type: ignore[union-attr]
    assert all(asyncio.run(check_all()))
    between()
    clock.next_pass()
    mlflow.calls.clear()
    mlflow.version_searches.clear()
    mlflow.versions_read = 0
    return asyncio.run(check_all())


def test_a_pass_over_unchanged_models_reads_again_only_their_declared_tagged_versions():
    mlflow, services, clock = world(50, versions=40)
    bodies = [body(mlflow, i) for i in range(50)]
    assert all(two_passes(mlflow, services, clock, bodies))
    names = ", ".join(f"'{NS}.m{i}'" for i in sorted(range(50), key=str))
    assert mlflow.calls == ["search_registered_models", "search_model_versions", "search_model_versions"]
    assert mlflow.version_searches == [
        f"name IN ({names}) ORDER BY last_updated_timestamp DESC",  # what was updated since the last pass
        f"name IN ({names}) AND version_number = 1",  # the versions whose tags are declared
    ]
    assert mlflow.versions_read == RECENT_PAGE_SIZE + 50  # of 2,000


def test_a_pass_over_unchanged_models_in_several_filters_reads_one_page_per_filter():
    """700 names need two `name IN (...)` filters, the second's versions registered after
    the first's: the search for updates starts where the previous pass started, not at the
    newest stamp of the first filter's answer, so it does not read the second's every time."""
    mlflow, services, clock = world(700, versions=3)
    undeclared = [{"name": f"{NS}.m{i}", "aliases": {"champion": "1"}} for i in range(700)]
    bodies = [body(mlflow, i, undeclared[i]) for i in range(700)]
    assert len(names_in_filters(mlflow.models)) == 2
    assert all(two_passes(mlflow, services, clock, bodies))
    assert mlflow.versions_read == 2 * RECENT_PAGE_SIZE  # of 2,100


def test_a_version_registered_between_passes_moves_the_models_stamp_and_its_versions_are_read_in_full():
    mlflow, services, clock = world(3, versions=10)
    bodies = [body(mlflow, i) for i in range(3)]

    def register() -> None:
        mlflow.versions[f"{NS}.m1"].append(ModelVersionInfo(f"{NS}.m1", "11", "None", "", "models:/m-11", "run11",
                                                            "READY", last_updated=WRITTEN + 5000))
        move_model_stamp(mlflow, f"{NS}.m1")

    assert two_passes(mlflow, services, clock, bodies, register) == [True, False, True]
    assert f"name IN ('{NS}.m1')" in mlflow.version_searches
    assert f"name IN ('{NS}.m0', '{NS}.m2')" not in mlflow.version_searches


def test_a_version_deleted_between_passes_is_seen_through_the_models_stamp():
    mlflow, services, clock = world(1, versions=3)
    obj = body(mlflow, 0)

    def delete() -> None:
        del mlflow.versions[f"{NS}.m0"][2]
        move_model_stamp(mlflow, f"{NS}.m0")

    assert two_passes(mlflow, services, clock, [obj], delete) == [False]


def test_a_stage_or_description_changed_by_hand_is_found_by_the_search_for_recent_updates():
    mlflow, services, clock = world(2, versions=30)
    spec_staged = {**spec(0), "versions": [{"version": "2", "stage": "Production", "description": "declared"}]}
    edit_version(mlflow, f"{NS}.m0", "2", moves=False, stage="Production", description="declared")
    bodies = [body(mlflow, 0, spec_staged), body(mlflow, 1)]

    def edit() -> None:
        edit_version(mlflow, f"{NS}.m0", "2", moves=True, description="edited by hand")

    assert two_passes(mlflow, services, clock, bodies, edit) == [False, True]
    assert not any(search.startswith("name IN") and " AND " not in search and " ORDER BY " not in search
                   for search in mlflow.version_searches)  # nothing read in full


def test_a_description_of_a_version_only_status_shows_is_mirrored_on_the_next_pass():
    mlflow, services, clock = world(1, versions=5)
    obj = body(mlflow, 0)

    def edit() -> None:
        edit_version(mlflow, f"{NS}.m0", "5", moves=True, description="notes added by hand")

    assert two_passes(mlflow, services, clock, [obj], edit) == [False]


def test_a_declared_version_tag_changed_by_hand_is_read_on_the_next_pass_though_no_stamp_moves():
    mlflow, services, clock = world(2, versions=5)
    bodies = [body(mlflow, i) for i in range(2)]

    def edit() -> None:
        edit_version(mlflow, f"{NS}.m1", "1", moves=False, tags={"validation": "failed"})

    assert two_passes(mlflow, services, clock, bodies, edit) == [True, False]


def test_every_model_is_read_in_full_again_once_its_versions_are_older_than_the_full_read_age():
    mlflow, services, clock = world(2, versions=5)
    bodies = [body(mlflow, i) for i in range(2)]

    def much_later() -> None:
        clock.now += 100 * PAGE_AGE

    assert all(two_passes(mlflow, services, clock, bodies, much_later))
    assert f"name IN ('{NS}.m0', '{NS}.m1')" in mlflow.version_searches


def test_a_model_without_a_stamp_is_read_in_full_on_every_pass():
    mlflow, services, clock = world(1, versions=5)
    mlflow.models[f"{NS}.m0"] = dataclasses.replace(mlflow.models[f"{NS}.m0"], last_updated=None)
    assert two_passes(mlflow, services, clock, [body(mlflow, 0)]) == [True]
    assert mlflow.version_searches == [f"name IN ('{NS}.m0')"]


def test_an_edit_stamped_before_a_later_read_of_the_same_pass_is_found_by_the_next_pass():
    """Pass 2 searches m0's updates, then m1 (changed) is read in full, with a version newer
    than an edit to m0 made between the two reads: pass 3 must still find that edit."""
    mlflow, services, clock = world(2, versions=3)
    bodies = [body(mlflow, i) for i in range(2)]
    search = mlflow.search_model_versions_page

    async def edit_after_the_search_for_updates(*args, **kwargs):
        found = await search(*args, **kwargs)
        if kwargs.get("order_by"):
            edit_version(mlflow, f"{NS}.m0", "3", moves=True, description="edited meanwhile")
        return found

    def change_m1_then_edit_m0_during_the_pass() -> None:
        mlflow.versions[f"{NS}.m1"].append(ModelVersionInfo(f"{NS}.m1", "4", "None", "", "models:/m-4", "run4",
                                                            "READY", last_updated=WRITTEN + 9000))
        move_model_stamp(mlflow, f"{NS}.m1")
        mlflow.search_model_versions_page = edit_after_the_search_for_updates  # type: ignore[method-assign]

    assert two_passes(mlflow, services, clock, bodies, change_m1_then_edit_m0_during_the_pass) == [True, False]
    mlflow.search_model_versions_page = search  # type: ignore[method-assign]
    clock.next_pass()
    assert not in_sync(services, bodies[0])  # status does not show m0's new description yet
