"""Job shapes accepted by a dry run are not asked about again for a while (reconcilers/common.py)."""

from __future__ import annotations

from mlflow_operator.caches.remembered import RecentlyAccepted


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_shape_is_accepted_only_after_a_dry_run_accepted_it():
    accepted = RecentlyAccepted(max_age_seconds=60, clock=Clock())
    assert not accepted.accepted("a")
    accepted.remember("a")
    assert accepted.accepted("a") and not accepted.accepted("b")


def test_an_acceptance_is_forgotten_after_its_max_age():
    clock = Clock()
    accepted = RecentlyAccepted(max_age_seconds=60, clock=clock)
    accepted.remember("a")
    clock.now = 59.0
    assert accepted.accepted("a")
    clock.now = 60.0
    assert not accepted.accepted("a")


def test_the_oldest_acceptance_goes_first_beyond_the_limit():
    accepted = RecentlyAccepted(max_age_seconds=60, limit=2, clock=Clock())
    for shape in ("a", "b", "c"):
        accepted.remember(shape)
    assert [accepted.accepted(shape) for shape in ("a", "b", "c")] == [False, True, True]
