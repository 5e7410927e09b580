"""Reads during a Redis outage: Postgres serves sessions and listings, and no request hangs on a frozen Redis.

Each test starts a redis-server of its own (own port, no persistence) and stops or freezes it; the shared Redis
is never touched.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis import Redis as SyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError

from backend.config import Settings
from tests.conftest import LiveServer, auth
from tests.helpers import free_port

ALICE = auth("alice")


class OwnRedis:
    """A redis-server on a free loopback port that a test may stop, freeze (SIGSTOP) and thaw."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with SyncRedis(port=self.port, socket_timeout=1) as probe:
                    probe.ping()
                return
            except RedisConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def freeze(self) -> None:
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self._process.poll() is None:
            self.thaw()
            self._process.terminate()
            self._process.wait(timeout=10)


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    server = OwnRedis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def outage_client(settings: Settings, own_redis: OwnRedis) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        LiveServer(settings.model_copy(update={"redis_url": own_redis.url})) as live,
        httpx.AsyncClient(base_url=live.url, timeout=60) as client,
    ):
        yield client


async def _session_with_a_message(client: httpx.AsyncClient) -> str:
    r = await client.post("/api/chat/sessions", json={"title": "kept"}, headers=ALICE)
    assert r.status_code == 201
    return str(r.json()["id"])


async def test_session_reads_and_listings_are_served_from_postgres_when_redis_is_down(
    outage_client: httpx.AsyncClient, own_redis: OwnRedis
) -> None:
    client = outage_client
    sid = await _session_with_a_message(client)
    before = (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()
    assert (before["active_task"], before["active_task_known"]) == (None, True)

    own_redis.stop()

    r = await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["id"], body["title"], body["messages"]) == (sid, "kept", [])
    assert (body["active_task"], body["active_task_known"]) == (None, False)  # Redis holds it: unknown now

    listed = await client.get("/api/chat/sessions", headers=ALICE)
    assert listed.status_code == 200
    assert [s["id"] for s in listed.json()["sessions"]] == [sid]

    # Ownership still holds without the cache: another user's session stays invisible.
    assert (await client.get(f"/api/chat/sessions/{sid}", headers=auth("mallory"))).status_code == 404
    usage = await client.get(f"/api/chat/sessions/{sid}/usage", headers=ALICE)
    assert usage.status_code == 200  # every route behind the owned-session dependency passes it


async def test_a_frozen_redis_cannot_hang_a_session_read(outage_client: httpx.AsyncClient, own_redis: OwnRedis) -> None:
    client = outage_client
    sid = await _session_with_a_message(client)
    own_redis.freeze()  # connections are accepted by the kernel, nothing ever answers
    try:
        started = time.monotonic()
        r = await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)
        elapsed = time.monotonic() - started
    finally:
        own_redis.thaw()
    assert r.status_code == 200, r.text
    assert r.json()["active_task_known"] is False
    # Three Redis reads (session, messages, active turn), each bounded by the client's socket timeout.
    assert elapsed < 20, elapsed
