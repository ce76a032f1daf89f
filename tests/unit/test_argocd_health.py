"""Argo CD health checks: each kind's Lua, run as Argo CD runs an argocd-cm script (Lua 5.1,
gopher-lua's dialect, with only the base, table and package libraries and no string methods;
the returned table JSON-encoded and decoded as a health status, an unknown status read as
Unknown) against statuses captured from the operator, gives the expected health."""

import json
from pathlib import Path
from typing import Any

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


# Argo CD's health status codes; any other status a script returns is read as Unknown.
HEALTH_CODES = {"Unknown", "Progressing", "Suspended", "Healthy", "Degraded", "Missing"}
# Libraries Argo CD does not open for argocd-cm scripts (it opens base, table, package and a
# reduced os with no function these scripts could need).
CLOSED_LIBRARIES = ("string", "math", "io", "os", "coroutine", "debug")


def argocd_lua() -> Any:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    # Without the string library gopher-lua has no string metatable: ("x"):upper() fails.
    lua.execute("debug.setmetatable('', nil)")
    for library in CLOSED_LIBRARIES:
        lua.globals()[library] = None
    return lua


def json_like_gopher_json(value: Any) -> Any:
    """A Lua value as Argo CD's JSON encoder (layeh.com/gopher-json) writes it: a table with
    keys 1..n (or none) is an array, any other table an object of string keys."""
    if lua51.lua_type(value) != "table":
        return value
    keys = list(value.keys())
    if all(isinstance(key, int) for key in keys) and sorted(keys) == list(range(1, len(keys) + 1)):
        return [json_like_gopher_json(value[key]) for key in sorted(keys)]
    if not all(isinstance(key, str) for key in keys):
        raise TypeError("gopher-json cannot encode a table with mixed keys")
    return {key: json_like_gopher_json(value[key]) for key in keys}


def health(kind: str, obj: dict) -> dict:
    lua = argocd_lua()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute((BASE / kind / "health.lua").read_text())
    assert lua51.lua_type(result) == "table", "Argo CD expects a table from a health script"
    decoded = json.loads(json.dumps(json_like_gopher_json(result)))
    assert isinstance(decoded, dict), "an empty or array-like table is not a health status"
    if decoded.get("status") not in HEALTH_CODES:
        return {"status": "Unknown", "message": "Lua returned an invalid health status"}
    return {"status": decoded["status"], "message": decoded.get("message", "")}


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


def test_the_scripts_run_without_the_libraries_argo_cd_leaves_closed():
    lua = argocd_lua()
    with pytest.raises(lua51.LuaError):
        lua.execute("return ('x'):upper()")
    with pytest.raises(lua51.LuaError):
        lua.execute("return string.format('%d', 1)")


@pytest.mark.parametrize("kind", KINDS)
def test_an_object_the_operator_has_not_reported_on_is_progressing(kind):
    """As the API server returns an object just applied (the CRD's status default)."""
    obj = {"apiVersion": "mlflow.operator.dev/v1alpha1", "kind": kind,
           "metadata": {"name": "new", "generation": 1}, "spec": {}, "status": {"observedGeneration": 0}}
    assert health(kind, obj)["status"] == "Progressing"
