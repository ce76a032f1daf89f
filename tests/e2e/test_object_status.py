"""How tools that read status generically see the operator's objects: kstatus (the library
Flux and kpt use, built from its Go module by sandbox/build-binaries.sh) and Argo CD's health
scripts, on live objects."""

from __future__ import annotations

import json
import subprocess

import pytest

from helpers import Objects, wait_for

pytestmark = pytest.mark.sandbox

GRID = {"alpha": {"values": ["0.1"]}}


def kstatus(sandbox, *objects: dict) -> list[str]:
    """The kstatus library's verdict on each object, as Flux would read it."""
    done = subprocess.run([str(sandbox.bin / "kstatus")], input=json.dumps(list(objects)), capture_output=True,
                          text=True, check=True)
    return [json.loads(line)["status"] for line in done.stdout.splitlines()]


def template() -> dict:
    return {"metadata": {"annotations": {"sandbox.mlflow.operator.dev/hold": "true"}},
            "spec": {"containers": [{"name": "train", "image": "trainer:1"}]}}


def test_every_kind_is_in_progress_from_the_moment_it_is_applied(sandbox, experiments, models, runs, sweeps,
                                                                  namespace):
    """What the API server answers to the create, before the operator has written anything."""
    created = [
        experiments.create("exp", {}),
        models.create("clf", {"name": f"{namespace}-clf"}),
        runs.create("run", {"experimentRef": {"name": "exp"}, "template": template()}),
        sweeps.create("sweep", {"experimentName": f"{namespace}-sweep", "parameters": GRID,
                                "objective": {"metric": "accuracy"}, "template": template()}),
    ]
    assert [obj["status"] for obj in created] == [{"observedGeneration": 0}] * 4
    assert kstatus(sandbox, *created) == ["InProgress"] * 4


def test_a_ready_object_is_current(sandbox, experiments: Objects):
    experiments.create("exp", {})
    assert kstatus(sandbox, experiments.wait_ready("exp")) == ["Current"]


def test_a_spec_change_is_in_progress_until_the_operator_has_handled_it(sandbox, experiments: Objects):
    experiments.create("exp", {})
    experiments.wait_ready("exp")
    changed = experiments.patch_spec("exp", {"description": "changed"})
    assert changed["metadata"]["generation"] == 2
    assert changed["status"]["observedGeneration"] == 1  # the answer to the patch: not handled yet
    assert kstatus(sandbox, changed) == ["InProgress"]
    assert kstatus(sandbox, experiments.wait_ready("exp")) == ["Current"]


def test_a_stalled_object_is_failed(sandbox, experiments: Objects):
    experiments.create("elsewhere", {"tracking": {"uri": "http://127.0.0.1:9"}})
    stalled = wait_for(lambda: (lambda c: experiments.get("elsewhere") if c and c["status"] == "True" else None)(
        experiments.condition("elsewhere", "Stalled")), message="the Experiment to be Stalled")
    assert kstatus(sandbox, stalled) == ["Failed"]
