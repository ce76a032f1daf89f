"""Objective histories of trials that ended: they no longer change, so median stopping reads
each once per process instead of once per check."""

from __future__ import annotations

from collections import OrderedDict

History = list[tuple[int, float]]


class EndedHistories:
    """(run id, metric) -> the (step, value) history of an ended run, least recently used
    first out past `limit` entries."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._histories: OrderedDict[tuple[str, str], History] = OrderedDict()

    def get(self, run_id: str, metric: str) -> History | None:
        key = (run_id, metric)
        found = self._histories.get(key)
        if found is not None:
            self._histories.move_to_end(key)
        return found

    def put(self, run_id: str, metric: str, history: History) -> None:
        self._histories[(run_id, metric)] = history
        self._histories.move_to_end((run_id, metric))
        while len(self._histories) > self._limit:
            self._histories.popitem(last=False)
