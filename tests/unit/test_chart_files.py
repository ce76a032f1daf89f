"""The chart ships the project's CRDs unchanged, and its values schema admits no unknown keys."""

import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlflow-operator"


def test_the_charts_crds_are_byte_for_byte_the_projects_crds():
    ours = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert shipped == ours, "run `make chart-crds` to copy crds/ into the chart"


def test_every_object_in_the_values_schema_forbids_unknown_keys():
    def walk(node, path="values"):
        if node.get("type") == "object" and "properties" in node:
            assert node.get("additionalProperties") is False, f"{path} allows unknown keys"
            for key, child in node["properties"].items():
                walk(child, f"{path}.{key}")

    walk(json.loads((CHART / "values.schema.json").read_text()))


def test_values_yaml_and_schema_declare_the_same_keys():
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def keys(schema_node, values_node, path=""):
        if schema_node.get("type") == "object" and "properties" in schema_node:
            assert set(values_node) == set(schema_node["properties"]), path or "top level"
            for key, child in schema_node["properties"].items():
                keys(child, values_node[key], f"{path}.{key}")

    keys(schema, values)
