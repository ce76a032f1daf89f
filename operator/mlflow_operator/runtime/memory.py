"""Giving freed memory back to the system.

A burst (a restart resumes every object at once, thousands of runs applied together) frees
most of what it allocated, but glibc's allocator keeps the freed pages mapped for reuse, so
the process's RSS stays at the burst's peak. malloc_trim returns the free pages; it costs a
few milliseconds, run in a thread every half minute. Elsewhere than glibc (no malloc_trim)
nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
from typing import Callable

logger = logging.getLogger("mlflow_operator")

RELEASE_EVERY_SECONDS = 30.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    trim: Callable[[int], int] | None = getattr(libc, "malloc_trim", None)
    return trim


_TRIM = _malloc_trim()


def release_freed_memory() -> bool:
    """Return the allocator's free pages to the system; False where that is not possible."""
    if _TRIM is None:
        return False
    _TRIM(0)
    return True


async def release_freed_memory_forever(every: float = RELEASE_EVERY_SECONDS) -> None:
    if _TRIM is None:
        logger.info("no malloc_trim in this C library: memory freed after a burst stays with the process")
        return
    while True:
        await asyncio.sleep(every)
        await asyncio.to_thread(release_freed_memory)
