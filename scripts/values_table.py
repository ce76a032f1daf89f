"""Print the chart's configuration table (Markdown) from values.schema.json and values.yaml.

    python scripts/values_table.py            print the table
    python scripts/values_table.py --write    replace the table in README.md

tests/unit/test_readme.py fails when README.md's table differs from this output.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "mlflow-operator"
START, END = "<!-- values-table:start -->", "<!-- values-table:end -->"


def rows(schema: dict, values: dict, prefix: str = ""):
    for key, node in schema["properties"].items():
        path = f"{prefix}{key}"
        default = values.get(key) if isinstance(values, dict) else None
        if node.get("type") == "object" and "properties" in node:
            yield from rows(node, default or {}, f"{path}.")
            continue
        shown = json.dumps(default) if default not in (None, "", [], {}) else ("`\"\"`" if default == "" else "")
        if shown and not shown.startswith("`"):
            shown = f"`{shown}`"
        allowed = " One of: " + ", ".join(f"`{v}`" for v in node["enum"]) + "." if "enum" in node else ""
        yield f"| `{path}` | {shown} | {node.get('description', '')}{allowed} |"


def table() -> str:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    return "\n".join(["| value | default | meaning |", "|---|---|---|", *rows(schema, values)])


def readme_with_table(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        path = ROOT / "README.md"
        path.write_text(readme_with_table(path.read_text()))
    else:
        print(table())
