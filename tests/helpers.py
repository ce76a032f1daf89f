"""Small helpers for tests that wait on a live cluster and MLflow server."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(probe: Callable[[], T], timeout: float = 30.0, interval: float = 0.25, message: str = "") -> T:
    """Call `probe` until it returns something truthy; fail with `message` after `timeout` seconds.

    Exceptions from the probe count as "not yet" until the deadline; the last one is reported.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value:
                return value
        except Exception as error:  # noqa: BLE001 - reported below if it never succeeds
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message or probe}{detail}")
        time.sleep(interval)


def stays(probe: Callable[[], bool], duration: float, interval: float = 0.25) -> bool:
    """True if `probe` holds for the whole `duration` (checked every `interval`)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        if not probe():
            return False
        time.sleep(interval)
    return True
