"""Argo CD health checks: each kind's Lua, run with Lua 5.1 (Argo CD's gopher-lua dialect)
against statuses captured from the operator, gives the expected health."""

from pathlib import Path

import pytest
import yaml

lua51 = pytest.importorskip("lupa.lua51")

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "gitops" / "argocd" / "resource_customizations" / "mlflow.operator.dev"
KINDS = ("Experiment", "TrainingRun", "RegisteredModel", "TrainingSweep")


def cases():
    for kind in KINDS:
        for test in yaml.safe_load((BASE / kind / "health_test.yaml").read_text())["tests"]:
            yield pytest.param(kind, test, id=f"{kind}-{Path(test['inputPath']).stem}")


def health(kind: str, obj: dict) -> dict:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute((BASE / kind / "health.lua").read_text())
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize("kind, test", list(cases()))
def test_health_of_captured_statuses(kind, test):
    obj = yaml.safe_load((BASE / kind / test["inputPath"]).read_text())
    assert obj["kind"] == kind
    assert health(kind, obj) == test["healthStatus"]


def test_every_kind_covers_healthy_progressing_and_degraded():
    for kind in KINDS:
        statuses = {t["healthStatus"]["status"] for t in yaml.safe_load((BASE / kind / "health_test.yaml").read_text())["tests"]}
        assert {"Healthy", "Progressing", "Degraded"} <= statuses, kind


def test_the_argocd_cm_example_embeds_the_same_scripts():
    config_map = yaml.safe_load((ROOT / "examples" / "gitops" / "argocd" / "argocd-cm-health.yaml").read_text())
    for kind in KINDS:
        embedded = config_map["data"][f"resource.customizations.health.mlflow.operator.dev_{kind}"]
        assert embedded == (BASE / kind / "health.lua").read_text()
