"""Condition reasons live in one module (logic/reasons.py), and the reference lists them all."""

from __future__ import annotations

import ast
from pathlib import Path

from mlflow_operator.logic.reasons import Reason

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "mlflow_operator"
OUTCOMES = ("ready", "progressing", "stalled")


def test_every_reason_is_in_the_api_reference():
    reference = (ROOT / "docs" / "api.md").read_text()
    assert [reason.value for reason in Reason if f"`{reason.value}`" not in reference] == []


def test_no_outcome_is_made_with_a_reason_written_out_in_place():
    written_out = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in OUTCOMES \
                    and node.args and isinstance(node.args[0], ast.Constant):
                written_out.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.args[0].value!r}")
    assert written_out == []


def test_a_reason_is_its_own_string_in_json_and_text():
    import json

    assert json.dumps({"reason": Reason.JOB_PENDING}) == '{"reason": "JobPending"}'
    assert f"{Reason.JOB_PENDING}" == "JobPending"
