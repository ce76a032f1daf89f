"""What goes first when the operator is busy: starting TrainingRuns.

A TrainingRun's Job cannot be created before its MLflow run: while runs are being started
(a burst of applied runs, a sweep's trials), their MLflow calls go before those that close
runs whose Jobs ended, which wait for nothing (PriorityLimiter), and the other steps of open
runs wait until no run is being started (StartsFirst). What waited its `patience` goes
whatever is left, so that closing never starves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from contextvars import ContextVar
from typing import AsyncIterator, Callable, Iterator

# Set while a reconcile starts a run (reconcilers/trainingrun.py): its calls are urgent.
URGENT: ContextVar[bool] = ContextVar("urgent_calls", default=False)


@contextlib.contextmanager
def urgent() -> Iterator[None]:
    token = URGENT.set(True)
    try:
        yield
    finally:
        URGENT.reset(token)


class ServerBusy(Exception):
    """A call given up: every slot of its server is taken and none has been freed for a while."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"{waiting} calls waiting")
        self.waiting = waiting


class PriorityLimiter:
    """At most `slots` calls at once. A freed slot goes to the oldest urgent waiter, unless
    the oldest other one has waited `patience` seconds; then to the oldest other one.

    A server that stops answering keeps its slots taken: once no slot has been freed for
    `stalled_after` seconds, calls stop waiting for it (ServerBusy) instead of holding the
    operator's workers, which every namespace shares; the object is retried later. A busy
    server that answers frees slots all the time, and its calls wait as long as they need."""

    def __init__(self, slots: int, patience: float = 10.0, clock: Callable[[], float] = time.monotonic,
                 stalled_after: float | None = None) -> None:
        self._free = slots
        self._patience = patience
        self._clock = clock
        self._stalled_after = stalled_after
        self._progress_at = clock()  # the last time a slot was freed, or the limiter filled up
        self._urgent: deque[asyncio.Future[None]] = deque()
        self._normal: deque[tuple[float, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def slot(self, urgent: bool) -> AsyncIterator[None]:
        if self._free > 0:  # a slot is only ever free while nobody waits (see _release)
            self._free -= 1
            if self._free == 0:
                self._progress_at = self._clock()
        else:
            if self._stalled():
                raise ServerBusy(self._waiting())
            granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            if urgent:
                self._urgent.append(granted)
            else:
                self._normal.append((self._clock(), granted))
            try:
                await self._granted_or_stalled(granted)
            except asyncio.CancelledError:
                if granted.done() and not granted.cancelled():
                    self._release()  # granted, then cancelled before it could run
                raise
        try:
            yield
        finally:
            self._release()

    def _stalled(self) -> bool:
        return self._stalled_after is not None and self._clock() - self._progress_at >= self._stalled_after

    def _waiting(self) -> int:
        return sum(not f.done() for f in self._urgent) + sum(not f.done() for _, f in self._normal)

    async def _granted_or_stalled(self, granted: asyncio.Future[None]) -> None:
        if self._stalled_after is None:
            await granted
            return
        while True:
            try:
                await asyncio.wait_for(asyncio.shield(granted), self._stalled_after)
                return
            except asyncio.TimeoutError:
                if granted.done():
                    return
                if self._stalled():
                    granted.cancel()  # left in the queue as abandoned (_drop_abandoned)
                    raise ServerBusy(self._waiting()) from None

    def _drop_abandoned(self) -> None:
        while self._urgent and self._urgent[0].done():
            self._urgent.popleft()
        while self._normal and self._normal[0][1].done():
            self._normal.popleft()

    def _release(self) -> None:
        self._progress_at = self._clock()
        self._drop_abandoned()
        overdue = bool(self._normal) and self._clock() - self._normal[0][0] >= self._patience
        if self._urgent and not overdue:
            self._urgent.popleft().set_result(None)
        elif self._normal:
            self._normal.popleft()[1].set_result(None)
        else:
            self._free += 1


class StartsFirst:
    """While runs are being started on a tracking server, the bookkeeping of its other runs
    (a phase that moved to Running, closing a run whose Job ended) waits, at most `patience`
    seconds: on a busy operator, the API server and MLflow serve the starts first, which Jobs
    wait on; the bookkeeping is the same work a little later. Per server, so that a server
    that stops answering holds back only its own runs."""

    def __init__(self, patience: float = 60.0) -> None:
        self._patience = patience
        self._starting: dict[str, int] = {}
        self._none_starting: dict[str, asyncio.Event] = {}

    @contextlib.contextmanager
    def starting(self, server: str) -> Iterator[None]:
        self._starting[server] = self._starting.get(server, 0) + 1
        self._none_starting.setdefault(server, asyncio.Event())
        try:
            yield
        finally:
            self._starting[server] -= 1
            if self._starting[server] == 0:
                del self._starting[server]
                self._none_starting.pop(server).set()

    async def after_starts(self, server: str | None) -> bool:
        """Returns when no run is being started on `server`, or after `patience` seconds;
        whether it waited."""
        none_starting = self._none_starting.get(server) if server else None
        if none_starting is None:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(none_starting.wait(), self._patience)
        return True
