"""The order in which MLflow calls get a thread when a server is busy (scheduling/priority.py)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from mlflow_operator.scheduling.priority import URGENT, PriorityLimiter, StartsFirst, urgent


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def record_order(limiter: PriorityLimiter, calls: list[tuple[str, bool]], clock: Clock | None = None,
                       waited: float = 0.0) -> list[str]:
    """Hold the only slot, queue `calls` (name, urgent) in order, then let them through one
    at a time; the order they ran in."""
    order: list[str] = []
    holding, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with limiter.slot(urgent=False):
            holding.set()
            await release.wait()
            if clock is not None:
                clock.now += waited

    async def call(name: str, is_urgent: bool) -> None:
        async with limiter.slot(urgent=is_urgent):
            order.append(name)

    first = asyncio.create_task(holder())
    await holding.wait()
    tasks = [asyncio.create_task(call(name, is_urgent)) for name, is_urgent in calls]
    await asyncio.sleep(0)  # every call runs until it waits for the slot
    release.set()
    await asyncio.gather(first, *tasks)
    return order


def test_a_call_that_starts_a_run_goes_before_one_that_closes_a_run_queued_earlier():
    order = asyncio.run(record_order(PriorityLimiter(1), [("close", False), ("start", True)]))
    assert order == ["start", "close"]


def test_calls_of_the_same_priority_keep_their_order():
    order = asyncio.run(record_order(PriorityLimiter(1), [("a", False), ("b", True), ("c", False), ("d", True)]))
    assert order == ["b", "d", "a", "c"]


def test_a_call_that_waited_its_patience_goes_first_whatever_it_is():
    clock = Clock()
    limiter = PriorityLimiter(1, patience=10.0, clock=clock)
    order = asyncio.run(record_order(limiter, [("close", False), ("start", True)], clock, waited=10.0))
    assert order == ["close", "start"]


def test_no_more_calls_run_at_once_than_there_are_slots():
    limiter = PriorityLimiter(3)
    running, most = 0, 0

    async def call(is_urgent: bool) -> None:
        nonlocal running, most
        async with limiter.slot(urgent=is_urgent):
            running += 1
            most = max(most, running)
            await asyncio.sleep(0.001)
            running -= 1

    async def main() -> None:
        await asyncio.gather(*(call(i % 2 == 0) for i in range(30)))

    asyncio.run(main())
    assert most == 3


def test_a_cancelled_waiter_gives_its_turn_to_the_next():
    async def main() -> list[str]:
        limiter = PriorityLimiter(1)
        order: list[str] = []
        release = asyncio.Event()

        async def holder() -> None:
            async with limiter.slot(urgent=False):
                await release.wait()

        async def call(name: str) -> None:
            async with limiter.slot(urgent=True):
                order.append(name)

        held = asyncio.create_task(holder())
        await asyncio.sleep(0)
        gone, kept = asyncio.create_task(call("gone")), asyncio.create_task(call("kept"))
        await asyncio.sleep(0)
        gone.cancel()
        release.set()
        await asyncio.gather(held, kept)
        with pytest.raises(asyncio.CancelledError):
            await gone
        async with limiter.slot(urgent=False):  # the slot came back
            order.append("after")
        return order

    assert asyncio.run(main()) == ["kept", "after"]


def test_calls_are_urgent_only_inside_urgent():
    assert not URGENT.get()
    with urgent():
        assert URGENT.get()
    assert not URGENT.get()


def test_bookkeeping_waits_until_no_run_is_being_started_on_its_server():
    async def scenario() -> list[str]:
        starts, order, started = StartsFirst(patience=5.0), [], asyncio.Event()

        async def start() -> None:
            with starts.starting("http://a"):
                await started.wait()
                order.append("started")

        async def close() -> None:
            await starts.after_starts("http://a")
            order.append("closed")

        starting = asyncio.create_task(start())
        await asyncio.sleep(0)  # the start runs until it waits, marked as starting
        closing = asyncio.create_task(close())
        await asyncio.sleep(0)  # the close runs until it waits for the start
        started.set()
        await asyncio.gather(closing, starting)
        return order

    assert asyncio.run(scenario()) == ["started", "closed"]


def waited_while_starting_on_a(server: str, patience: float) -> bool:
    """Whether bookkeeping for `server` waited while a run was being started on http://a."""

    async def scenario() -> bool:
        starts = StartsFirst(patience=patience)
        with starts.starting("http://a"):
            return await starts.after_starts(server)

    return asyncio.run(asyncio.wait_for(scenario(), 1.0))


def test_bookkeeping_does_not_wait_for_starts_on_another_server():
    assert waited_while_starting_on_a("http://b", patience=5.0) is False


def test_bookkeeping_does_not_wait_when_no_run_is_being_started():
    assert asyncio.run(StartsFirst(patience=5.0).after_starts("http://a")) is False


def test_bookkeeping_goes_after_its_patience_even_while_runs_are_being_started():
    assert waited_while_starting_on_a("http://a", patience=0.01) is True


def test_calls_stop_waiting_for_a_server_that_frees_no_slot():
    """The server's only slot is held by a call that never returns: a waiting call gives up
    once no slot has been freed for `stalled_after`, and a new call is refused at once."""
    asyncio.run(stalled_server())


async def stalled_server() -> None:
    from mlflow_operator.scheduling.priority import ServerBusy

    limiter = PriorityLimiter(1, stalled_after=0.05)
    stuck = asyncio.Event()

    async def never_answers() -> None:
        async with limiter.slot(urgent=False):
            stuck.set()
            await asyncio.sleep(10)

    holder = asyncio.create_task(never_answers())
    await stuck.wait()
    with pytest.raises(ServerBusy):
        async with limiter.slot(urgent=True):
            pass
    with pytest.raises(ServerBusy):
        async with limiter.slot(urgent=False):
            pass
    holder.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await holder
    async with limiter.slot(urgent=False):  # the slot is free again
        pass


def test_calls_wait_as_long_as_they_need_for_a_server_that_keeps_freeing_slots():
    limiter = PriorityLimiter(1, stalled_after=0.05)

    async def call() -> None:
        async with limiter.slot(urgent=False):
            await asyncio.sleep(0.02)

    async def calls() -> None:
        await asyncio.gather(*(call() for _ in range(10)))  # 0.2 s in all, 0.02 s per slot

    asyncio.run(calls())
