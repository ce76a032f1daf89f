"""A heartbeat file, for probes that cannot use HTTP.

On a host network every replica on a node would need ports of its own, so the chart can probe
by exec instead (`health.probe: exec`): the operator rewrites the file every few seconds from
its event loop, and `mlflow-operator probe` checks that it is recent. A blocked event loop, or
an operator that stopped, lets it go stale.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

INTERVAL_SECONDS = 5.0


def beat_once(path: Path) -> None:
    """Write the current time, atomically: a probe never reads a half-written file."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(f"{time.time():.3f}\n")
    os.replace(temporary, path)


async def beat_forever(path: Path, interval: float = INTERVAL_SECONDS) -> None:
    while True:
        beat_once(path)
        await asyncio.sleep(interval)


def age_seconds(path: Path, now: float | None = None) -> float | None:
    """Seconds since the last beat, or None if there was none (or the file is unreadable)."""
    try:
        last = float(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return (time.time() if now is None else now) - last
