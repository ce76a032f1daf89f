"""Whether kopf keeps this replica on standby, decided from its peering object as kopf
decides it: work that runs outside kopf's handlers (the drift passes) must stand by too."""

from __future__ import annotations

import datetime as dt
from typing import Any, Mapping

from mlflow_operator.logic import timestamps

# kopf's default lifetime of a peer's record, in seconds, when the record has none.
DEFAULT_PEER_LIFETIME = 60


def standing_by(peers: Mapping[str, Any], identity: str, priority: int, now: dt.datetime) -> bool:
    """True when another live peer has a higher priority, or the same one (kopf then pauses
    every peer that shares it). `peers` is the peering object's status: identity -> record."""
    for peer, record in peers.items():
        if peer == identity or not isinstance(record, Mapping):
            continue
        if _alive(record, now) and int(record.get("priority") or 0) >= priority:
            return True
    return False


def _alive(record: Mapping[str, Any], now: dt.datetime) -> bool:
    try:
        last_seen = timestamps.parse(record.get("lastseen"))
        lifetime = dt.timedelta(seconds=int(record.get("lifetime") or DEFAULT_PEER_LIFETIME))
    except (TypeError, ValueError):
        return True  # a record kopf wrote but this cannot read: assume the peer is there
    return last_seen is None or last_seen + lifetime > now
