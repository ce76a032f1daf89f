"""What the operator remembers of earlier calls, in memory only: credentials read from a
Secret (for cleanup after the Secret is gone) and Job shapes a dry run accepted."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable

from mlflow_operator.tracking.servers import Credentials


class RememberedCredentials:
    """The credentials last read from each Secret, in memory only, so that cleanup can still
    close runs in MLflow when a namespace's deletion has removed the Secret first."""

    def __init__(self, limit: int = 1024) -> None:
        self._limit = limit
        self._entries: OrderedDict[tuple[str, str, str], Credentials] = OrderedDict()

    def remember(self, key: tuple[str, str, str], credentials: Credentials) -> None:
        self._entries[key] = credentials
        self._entries.move_to_end(key)
        while len(self._entries) > self._limit:
            self._entries.popitem(last=False)

    def recall(self, key: tuple[str, str, str]) -> Credentials | None:
        return self._entries.get(key)


class RecentlyAccepted:
    """Job shapes (logic.trainingrun.job_shape) the API server accepted in a dry run lately:
    a burst of runs of one template, or a sweep's trials, asks once, not once per run. Only
    acceptance is kept, and only for `max_age_seconds`, so that a changed admission rule
    (a policy, a quota) is asked about again soon."""

    def __init__(self, max_age_seconds: float = 60.0, limit: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age, self._limit, self._clock = max_age_seconds, limit, clock
        self._accepted: OrderedDict[str, float] = OrderedDict()

    def accepted(self, shape: str) -> bool:
        at = self._accepted.get(shape)
        return at is not None and self._clock() - at < self._max_age

    def remember(self, shape: str) -> None:
        self._accepted[shape] = self._clock()
        self._accepted.move_to_end(shape)
        while len(self._accepted) > self._limit:
            self._accepted.popitem(last=False)
