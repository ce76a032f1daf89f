"""The drift passes stand by when kopf would pause this replica."""

import datetime as dt

from mlflow_operator.runtime.kopf_adapter import standing_by

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.timezone.utc)


def seen(seconds_ago: float, priority: int, lifetime: int = 60) -> dict[str, object]:
    return {"priority": priority, "lifetime": lifetime,
            "lastseen": (NOW - dt.timedelta(seconds=seconds_ago)).isoformat()}


def test_a_replica_alone_is_active():
    assert not standing_by({"me": seen(1, 100)}, "me", 100, NOW)


def test_a_live_peer_with_a_higher_priority_puts_this_replica_on_standby():
    assert standing_by({"me": seen(1, 100), "other": seen(5, 200)}, "me", 100, NOW)


def test_a_live_peer_with_a_lower_priority_leaves_this_replica_active():
    assert not standing_by({"me": seen(1, 200), "other": seen(5, 100)}, "me", 200, NOW)


def test_a_live_peer_with_the_same_priority_pauses_both_as_kopf_does():
    assert standing_by({"me": seen(1, 100), "other": seen(5, 100)}, "me", 100, NOW)


def test_a_peer_whose_record_expired_is_dead():
    assert not standing_by({"me": seen(1, 100), "other": seen(61, 200, lifetime=60)}, "me", 100, NOW)


def test_a_record_that_cannot_be_read_counts_as_a_live_peer():
    assert standing_by({"other": {"priority": 200, "lastseen": "yesterday"}}, "me", 100, NOW)


def test_the_peer_identity_is_the_pod_name_the_chart_sets_as_kopf_reads_it(monkeypatch):
    from mlflow_operator.runtime.kopf_adapter import peer_identity

    monkeypatch.setenv("POD_ID", "mlflow-operator-7d9f-abcde")
    assert peer_identity() == "mlflow-operator-7d9f-abcde"


def test_without_a_pod_name_each_process_has_its_own_peer_identity(monkeypatch):
    from mlflow_operator.runtime.kopf_adapter import peer_identity

    monkeypatch.delenv("POD_ID", raising=False)
    assert peer_identity() != peer_identity()
