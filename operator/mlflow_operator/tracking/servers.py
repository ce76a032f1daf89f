"""Tracking servers: which URIs are well formed, which servers the operator may call, and
the credentials it sends them. Imported by both the configuration and the MLflow code, so
it depends on neither."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Credentials:
    """How to authenticate to an MLflow server. `repr` never shows the secret parts."""

    username: str | None = field(default=None)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)


# Which server a URI names: scheme, host and port (the port filled in from the scheme).
Origin = tuple[str, str, int]

_DEFAULT_PORTS = {"http": 80, "https": 443}


def uri_problem(uri: str) -> str | None:
    """Why a tracking URI cannot be used, or None when it can.

    User info, a query or a fragment are refused: each can make a URI look like one server
    or path while the request goes elsewhere, and none has a use for an MLflow server.
    """
    parts = urlsplit(uri)
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return f"tracking URI {uri!r} must be an http:// or https:// URL of an MLflow server"
    if "@" in parts.netloc:
        return "tracking URI must not contain credentials: put them in a Secret and set spec.tracking.secretRef"
    if "?" in uri or "#" in uri:
        return f"tracking URI {uri!r} must not have a query (?) or a fragment (#)"
    try:
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        return f"tracking URI {uri!r} has an invalid port"
    return None


def origin_of(uri: str) -> Origin:
    """The (scheme, host, port) a well-formed URI sends its requests to."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS[scheme]


def describe_origin(origin: Origin) -> str:
    scheme, host, port = origin
    return f"{scheme}://{host}:{port}"


@dataclass(frozen=True)
class Allowlist:
    """The servers objects may name: the default server and the configured entries. Entries
    match by scheme, host and port; their path is not compared."""

    origins: frozenset[Origin] = frozenset()
    # The allowed servers that run MLflow workspaces with Kubernetes authorization: the
    # operator calls them inside the object's namespace's workspace, as itself.
    workspace_origins: frozenset[Origin] = frozenset()

    @classmethod
    def of(cls, default_uri: str | None, entries: tuple[str, ...] = (),
           workspace_entries: tuple[str, ...] = ()) -> "Allowlist":
        uris = [*entries, *workspace_entries, *([default_uri] if default_uri else [])]
        return cls(frozenset(origin_of(uri) for uri in uris), frozenset(origin_of(uri) for uri in workspace_entries))

    def allows(self, uri: str) -> bool:
        return uri_problem(uri) is None and origin_of(uri) in self.origins

    def uses_workspaces(self, uri: str) -> bool:
        return uri_problem(uri) is None and origin_of(uri) in self.workspace_origins

    def describe(self) -> str:
        return ", ".join(sorted(describe_origin(o) for o in self.origins)) or "none"


# A projected ServiceAccount token is rotated by the kubelet well before it expires; reading it
# again this often picks up the new one (as MLflow's own Kubernetes auth provider does).
TOKEN_REREAD_SECONDS = 60.0


class TokenFile:
    """The operator's own bearer token for workspace servers: its ServiceAccount token, read
    from a file and read again every minute, so that a rotated token is used."""

    def __init__(self, path: Path, reread_seconds: float = TOKEN_REREAD_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self._reread, self._clock = reread_seconds, clock
        self._token: str | None = None
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r})"

    def read(self) -> str:
        """The current token; OSError or ValueError when the file is missing or empty."""
        with self._lock:
            if self._token is None or self._clock() - self._read_at >= self._reread:
                token = self.path.read_text().strip()
                if not token:
                    raise ValueError(f"{self.path} is empty")
                self._token, self._read_at = token, self._clock()
            return self._token
