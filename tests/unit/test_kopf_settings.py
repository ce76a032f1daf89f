"""The kopf settings the operator relies on (runtime.build_settings)."""

from __future__ import annotations

from mlflow_operator.runtime.config import OperatorConfig
from mlflow_operator.runtime.kopf_adapter import HandledGenerations
from mlflow_operator.runtime.process import build_settings


def test_a_stopped_timer_is_checked_every_second_so_a_deleted_object_goes_at_once():
    """kopf keeps an object's finalizer until its timer has exited, and by default looks
    again only a minute later."""
    settings = build_settings(OperatorConfig(), HandledGenerations())
    assert settings.background.cancellation_polling == 1.0
