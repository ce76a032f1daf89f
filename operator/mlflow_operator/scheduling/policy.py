"""How a step is scheduled when the operator is busy, declared by the step and applied here
in one place (decision 0012): starting a TrainingRun goes first, because its Job waits on
it; the bookkeeping of runs already started (following their Jobs, closing them) waits while
runs are being started on the same server, at most StartsFirst's patience; the rest goes
as it comes."""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

from mlflow_operator.scheduling.priority import StartsFirst, urgent

# start        its MLflow calls are urgent (they go before the others' on a busy server);
#              the step marks its server as starting once it knows it (StartsFirst.starting);
# bookkeeping  waits while runs are being started on its server;
# normal       neither.
Schedule = Literal["start", "bookkeeping", "normal"]


class Dispatcher:
    """Applies each step's schedule."""

    def __init__(self, starts: StartsFirst | None = None) -> None:
        self.starts = starts or StartsFirst()

    async def waited(self, schedule: Schedule, server: str | None) -> bool:
        """Before a step: wait if it must. True if it waited (what it acts on may have changed)."""
        return schedule == "bookkeeping" and await self.starts.after_starts(server)

    @contextlib.contextmanager
    def scheduled(self, schedule: Schedule) -> Iterator[None]:
        """Around a step: its MLflow calls urgent if it starts a run."""
        if schedule == "start":
            with urgent():
                yield
        else:
            yield
