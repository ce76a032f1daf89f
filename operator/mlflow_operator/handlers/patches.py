"""Status as JSON merge patches: replacing maps instead of merging them, telling a patch
that changes nothing, and a digest of a status."""

from __future__ import annotations

import json
from typing import Any


def replace_maps(before: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch merges maps key by key: null out keys that a map in `update` no
    longer has (a removed alias, a metric), so status maps are replaced, not accumulated."""
    result = dict(update)
    for key, value in update.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            result[key] = {**{k: None for k in old if k not in value}, **value}
    return result

def unchanged(status: dict[str, Any], patch: dict[str, Any]) -> bool:
    """Whether a merge patch would leave `status` as it is."""
    for key, value in patch.items():
        if value is None:
            if key in status:
                return False
        elif isinstance(value, dict) and isinstance(status.get(key), dict):
            if not unchanged(status[key], value):
                return False
        elif status.get(key) != value:
            return False
    return True

def status_digest(status: Any) -> int:
    """Which status a body holds, in a word per object (not a copy of it)."""
    return hash(json.dumps(status or {}, sort_keys=True, separators=(",", ":")))
