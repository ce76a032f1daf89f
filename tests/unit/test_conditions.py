"""Conditions are computed so that kstatus, Argo CD and `kubectl wait` agree."""

from mlflow_operator.logic.conditions import apply_outcome, changed_reason, progressing, ready, stalled


def by_type(conditions):
    return {c["type"]: c for c in conditions}


def test_ready_sets_ready_true_and_clears_reconciling_and_stalled():
    conditions = by_type(apply_outcome([], ready("Reconciled", "in sync"), generation=3, now="T1"))
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Reconciling"]["status"] == "False"
    assert conditions["Stalled"]["status"] == "False"
    assert all(c["observedGeneration"] == 3 for c in conditions.values())


def test_progressing_sets_reconciling_true():
    conditions = by_type(apply_outcome([], progressing("TrackingUnavailable", "down"), 1, now="T1"))
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["reason"] == "TrackingUnavailable"
    assert conditions["Reconciling"]["status"] == "True"
    assert conditions["Stalled"]["status"] == "False"


def test_stalled_sets_stalled_true_and_not_reconciling():
    conditions = by_type(apply_outcome([], stalled("Conflict", "taken"), 1, now="T1"))
    assert conditions["Stalled"]["status"] == "True"
    assert conditions["Reconciling"]["status"] == "False"
    assert conditions["Ready"]["message"] == "taken"


def test_last_transition_time_moves_only_when_status_changes():
    first = apply_outcome([], progressing("A", "a"), 1, now="T1")
    second = by_type(apply_outcome(first, progressing("B", "b"), 1, now="T2"))
    assert second["Ready"]["lastTransitionTime"] == "T1"
    assert second["Ready"]["reason"] == "B"
    third = by_type(apply_outcome(list(second.values()), ready("Reconciled", "ok"), 1, now="T3"))
    assert third["Ready"]["lastTransitionTime"] == "T3"


def test_extra_conditions_are_set_and_removed_when_no_longer_reported():
    with_extra = apply_outcome([], ready("Reconciled", "ok", extra={"VersionNotFound": ("True", "VersionNotFound", "v9")}), 1, now="T1",
                               managed_extra=("VersionNotFound",))
    assert by_type(with_extra)["VersionNotFound"]["status"] == "True"
    without = apply_outcome(with_extra, ready("Reconciled", "ok"), 1, now="T2", managed_extra=("VersionNotFound",))
    assert "VersionNotFound" not in by_type(without)


def test_foreign_condition_types_are_kept():
    conditions = apply_outcome([{"type": "Custom", "status": "True", "reason": "x", "message": "",
                                 "lastTransitionTime": "T0"}], ready("Reconciled", "ok"), 1, now="T1")
    assert "Custom" in by_type(conditions)


def test_an_event_is_due_only_when_ready_status_or_reason_changes():
    first = apply_outcome([], progressing("TrackingUnavailable", "down"), 1, now="T1")
    again = apply_outcome(first, progressing("TrackingUnavailable", "still down"), 1, now="T2")
    assert changed_reason(None, first)
    assert not changed_reason(first, again)
    assert changed_reason(again, apply_outcome(again, stalled("Conflict", "x"), 1, now="T3"))
