"""Ownership tags that cannot be forged: the operator signs them. No I/O.

Any pod holding the tracking URI can write an MLflow tag, so `k8s.namespace` or `k8s.uid`
alone prove nothing. The operator adds `k8s.owner-signature`: an HMAC-SHA256, with a key
only it holds, over the server, the kind of entity, the entity's id (an experiment's id, a
registered model's name) and the namespace and uid its tags name. Tags whose signature is
missing or does not verify are read as no ownership at all (docs/decisions/0023).

The keys are a ring (a directory of files, one key each, as a Secret mounts them): the
key whose name sorts last signs, every key verifies, so a key is rotated by adding one that
sorts after it; entities signed with an older key are signed again when next reconciled.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mlflow_operator.api.common import OWNERSHIP_TAGS, TAG_NAMESPACE, TAG_SIGNATURE, TAG_UID
from mlflow_operator.logic.ownership import CREATED_BY_TAG
from mlflow_operator.tracking.servers import describe_origin, origin_of

# An experiment is signed over its id; before it has one (while it is being created) over
# its name, which the first reconcile that knows the id replaces with the id's signature.
Entity = Literal["experiment", "experiment-name", "registered-model"]
VERSION = "v1"
KEY_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MIN_KEY_BYTES = 32


class NoSigningKey(RuntimeError):
    """The operator was started without an ownership key: it cannot create what it owns."""


@dataclass(frozen=True)
class KeyRing:
    keys: tuple[tuple[str, bytes], ...] = ()  # (key id, key), sorted by id: the last one signs

    @classmethod
    def of(cls, keys: dict[str, bytes]) -> "KeyRing":
        for key_id, key in keys.items():
            if not KEY_ID.fullmatch(key_id):
                raise ValueError(f"ownership key name {key_id!r} must be 1-64 letters, digits, '_' or '-'")
            if len(key) < MIN_KEY_BYTES:
                raise ValueError(f"ownership key {key_id!r} is shorter than {MIN_KEY_BYTES} bytes")
        return cls(tuple(sorted(keys.items())))

    @classmethod
    def from_directory(cls, path: Path) -> "KeyRing":
        """Every regular file in `path` whose name is a key id (a mounted Secret's `..data`
        entries are skipped); its content, without surrounding whitespace, is the key."""
        keys = {entry.name: entry.read_bytes().strip() for entry in sorted(path.iterdir())
                if not entry.name.startswith(".") and entry.is_file()}
        if not keys:
            raise ValueError(f"no ownership key in {path}")
        return cls.of(keys)

    def sign(self, message: bytes) -> str:
        if not self.keys:
            raise NoSigningKey("no ownership key configured (--ownership-keys)")
        key_id, key = self.keys[-1]
        return f"{VERSION}.{key_id}.{hmac.new(key, message, hashlib.sha256).hexdigest()}"

    def verifies(self, signature: str, message: bytes) -> bool:
        version, _, rest = signature.partition(".")
        key_id, _, digest = rest.partition(".")
        key = dict(self.keys).get(key_id)
        if version != VERSION or key is None:
            return False
        return hmac.compare_digest(digest, hmac.new(key, message, hashlib.sha256).hexdigest())


def _message(server_uri: str, entity: Entity, entity_id: str, namespace: str, uid: str) -> bytes:
    server = describe_origin(origin_of(server_uri))
    return "\n".join(("mlflow-operator ownership", VERSION, server, entity, entity_id, namespace, uid)).encode()


def signature(ring: KeyRing, server_uri: str, entity: Entity, entity_id: str, tags: dict[str, str]) -> str:
    """The signature for the ownership `tags` (their namespace and uid) of this entity."""
    return ring.sign(_message(server_uri, entity, entity_id, tags.get(TAG_NAMESPACE, ""), tags.get(TAG_UID, "")))


def signed(ring: KeyRing, server_uri: str, entity: Entity, entity_id: str, tags: dict[str, str]) -> dict[str, str]:
    """The ownership `tags` with their signature."""
    return {**tags, TAG_SIGNATURE: signature(ring, server_uri, entity, entity_id, tags)}


def verified(ring: KeyRing, server_uri: str, entity: Entity, entity_id: str, tags: dict[str, str],
             or_as: tuple[Entity, str] | None = None) -> dict[str, str]:
    """The entity's tags as the ownership rules may read them: unchanged when the signature
    verifies (for the entity, or `or_as` another entity and id: an experiment signed over
    its name at creation); without any ownership tag when it does not (or is missing), i.e.
    unowned."""
    claimed = tags.get(TAG_SIGNATURE, "")
    namespace, uid = tags.get(TAG_NAMESPACE, ""), tags.get(TAG_UID, "")
    for signed_as, signed_id in ((entity, entity_id), *([or_as] if or_as else [])):
        if claimed and ring.verifies(claimed, _message(server_uri, signed_as, signed_id, namespace, uid)):
            return tags
    return {key: value for key, value in tags.items() if key not in OWNERSHIP_TAGS and key != CREATED_BY_TAG}
