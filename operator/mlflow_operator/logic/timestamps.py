"""Kubernetes timestamps (RFC 3339, UTC, whole seconds) and MLflow's epoch milliseconds."""

from __future__ import annotations

import datetime as dt


def parse(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def rfc3339(moment: dt.datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def now_rfc3339() -> str:
    return rfc3339(now()) or ""


def millis(moment: dt.datetime | None) -> int | None:
    return int(moment.timestamp() * 1000) if moment else None


def seconds_since(text: str | None) -> float:
    """0 for no timestamp: nothing has been spent yet."""
    moment = parse(text)
    return (now() - moment).total_seconds() if moment else 0.0
