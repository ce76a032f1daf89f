"""Credentials Secrets come from the operator's watch of the Secrets labelled for it: a
reconcile or drift check reads a Secret only when the watch has not seen it (missing, not
labelled, or created a moment ago), so that the object can say which. The watch keeps the
values of the credential keys only."""

from __future__ import annotations

import asyncio
import base64
import time

from mlflow_operator.caches.watches import CREDENTIALS_MAX_AGE, WatchCache, Watched
from mlflow_operator.gateways.kubernetes import CredentialsSecret, credentials_data

from fakes import FakeKube, Writes


class CountingKube(FakeKube):
    """Answers every Secret read as 'exists, not labelled', and counts the reads."""

    def __init__(self) -> None:
        super().__init__(Writes())
        self.reads: list[tuple[str, str]] = []

    async def read_credentials_secret(self, namespace: str, name: str) -> CredentialsSecret | None:
        self.reads.append((namespace, name))
        return CredentialsSecret(name=name, opted_in=False, data={})


def encoded(**values: str) -> dict[str, str]:
    return {key: base64.b64encode(value.encode()).decode() for key, value in values.items()}


def watched_with(key: tuple[str, str], data: dict[str, str], seen_at: float | None = None) -> Watched:
    watched = Watched(credentials=WatchCache())
    watched.saw_credentials(key, data, now=seen_at)
    return watched


def test_a_watched_labelled_secret_is_used_without_a_read():
    kube = CountingKube()
    watched = watched_with(("team-a", "creds"), credentials_data(encoded(token="t0k")))
    secret = asyncio.run(watched.credentials_secret(kube, "team-a", "creds"))
    assert secret == CredentialsSecret(name="creds", opted_in=True, data={"token": "t0k"})
    assert kube.reads == []


def test_a_secret_the_watch_has_not_seen_is_read_to_say_why():
    kube = CountingKube()
    watched = watched_with(("team-a", "creds"), credentials_data(encoded(token="t0k")))
    secret = asyncio.run(watched.credentials_secret(kube, "team-b", "creds"))
    assert secret is not None and not secret.opted_in
    assert kube.reads == [("team-b", "creds")]


def test_the_watch_keeps_the_values_of_the_credential_keys_only():
    data = credentials_data(encoded(username="ann", password="pw", ssh_key="PRIVATE"))
    assert data == {"username": "ann", "password": "pw", "ssh_key": ""}


def test_a_secret_deleted_or_unlabelled_is_dropped_from_the_watch_and_read_again():
    kube = CountingKube()
    watched = watched_with(("team-a", "creds"), credentials_data(encoded(token="t0k")))
    assert watched.credentials is not None
    watched.saw_credentials(("team-a", "creds"), None)  # a DELETED event
    secret = asyncio.run(watched.credentials_secret(kube, "team-a", "creds"))
    assert secret is not None and not secret.opted_in
    assert kube.reads == [("team-a", "creds")]


def test_what_the_watch_saw_is_read_again_once_it_is_old():
    """A Secret unlabelled while the watch re-listed brings no event: its consent is checked
    again after CREDENTIALS_MAX_AGE, and dropped when the label is gone."""
    kube = CountingKube()
    watched = watched_with(("team-a", "creds"), credentials_data(encoded(token="t0k")),
                           seen_at=time.monotonic() - CREDENTIALS_MAX_AGE - 1)
    secret = asyncio.run(watched.credentials_secret(kube, "team-a", "creds"))
    assert secret is not None and not secret.opted_in
    assert kube.reads == [("team-a", "creds")]
    assert watched.credentials is not None and watched.credentials.get(("team-a", "creds")) is None
