"""Deleting an object never hangs on MLflow: which failed cleanup steps are tried again."""

from mlflow_operator.handlers.common import cleanup_keeps_trying
from mlflow_operator.logic.conditions import progressing, stalled

BUDGET = 120


def test_waiting_for_open_runs_is_tried_again_however_long_it_takes():
    assert cleanup_keeps_trying(progressing("WaitingForRuns", "m", expected=True), 10_000, BUDGET)


def test_an_outage_is_tried_again_within_the_budget_only():
    outage = progressing("TrackingUnavailable", "m")
    assert cleanup_keeps_trying(outage, 30, BUDGET)
    assert not cleanup_keeps_trying(outage, 121, BUDGET)


def test_a_refusal_or_a_secret_gone_for_good_lets_go_at_once():
    assert not cleanup_keeps_trying(stalled("TrackingRejected", "m"), 0, BUDGET)
    assert not cleanup_keeps_trying(stalled("SecretNotFound", "m"), 0, BUDGET)
