"""A lease that looks lapsed because Redis was away is not taken for a dead owner (see `backend/chat/lapses.py`).

CI once lost 10 of 20 replies in the chaos suite's "Redis down 10 s": when Redis came back every lease had lapsed on
the wall clock, the other pod closed the still-streaming turns as interrupted before their owner renewed, and the
owner's complete reply was then refused as already stored.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from backend import keys
from backend.chat.lapses import LapseWatch
from backend.config import Settings
from backend.runtime import Runtime
from tests.conftest import LiveServer
from tests.streams.test_durable_turns import ALICE, kinds, new_session, read, stored

# --- the watch on its own ------------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_lapse_counts_only_once_it_lasted_the_grace() -> None:
    clock = Clock()
    watch = LapseWatch(2.0, clock=clock)
    assert not watch.confirmed("t", True)
    clock.now += 1.9
    assert not watch.confirmed("t", True)
    clock.now += 0.1
    assert watch.confirmed("t", True)


def test_a_renewal_in_between_starts_the_watch_over() -> None:
    clock = Clock()
    watch = LapseWatch(2.0, clock=clock)
    watch.confirmed("t", True)
    clock.now += 1.5
    assert not watch.confirmed("t", False)  # the owner renewed
    clock.now += 1.5
    assert not watch.confirmed("t", True)
    clock.now += 2.0
    assert watch.confirmed("t", True)


def test_a_failed_redis_call_starts_every_watch_over() -> None:
    clock = Clock()
    watch = LapseWatch(2.0, clock=clock)
    watch.confirmed("t", True)
    clock.now += 3.0
    watch.reset()
    assert not watch.confirmed("t", True)


def test_turns_no_one_looks_at_are_dropped() -> None:
    clock = Clock()
    watch = LapseWatch(2.0, clock=clock)
    watch.confirmed("old", True)
    clock.now += 3.0
    watch.confirmed("recent", True)
    clock.now += 1.5
    watch.prune()
    assert len(watch) == 1
    clock.now += 0.5
    assert watch.confirmed("recent", True)
    assert not watch.confirmed("old", True)  # watched from scratch


# --- two pods, one of them sees its neighbour's lease lapse --------------------------------------------------


@pytest.fixture
async def two_servers(chat_settings: Settings) -> AsyncIterator[tuple[LiveServer, LiveServer]]:
    # Renewal every 2 s: the owner's supervisor cannot renew between the test's moves by chance.
    settings = chat_settings.model_copy(update={"turn_lease_seconds": 6.0})
    async with LiveServer(settings) as a, LiveServer(settings) as b:
        yield a, b


def runtime_of(server: LiveServer) -> Runtime:
    runtime: Runtime = server.app.state.runtime
    return runtime


async def test_a_lease_lapsed_while_redis_was_away_does_not_close_a_live_owners_turn(
    two_servers: tuple[LiveServer, LiveServer], redis: Redis, db: asyncpg.Connection
) -> None:
    a, b = two_servers
    async with httpx.AsyncClient(base_url=a.url, timeout=30) as client:
        sid = await new_session(client)
        reply = read(
            client,
            "POST",
            f"/api/chat/sessions/{sid}/stream",
            json={"message": "[[mock:text tokens=150 delay_ms=20]]"},
            headers=ALICE,
        )
        await reply.wait_for_text()
        assert reply.task_id is not None
        # What Redis holds when it comes back after an outage longer than the lease: the deadline has passed.
        await redis.zadd(keys.TURN_LEASES, {reply.task_id: time.time() - 1})
        await runtime_of(b).supervisor.reap_expired()  # the other pod's supervisor looks first
        await asyncio.sleep(0.1)
        assert not await db.fetchval(
            "SELECT count(*) FROM chat_messages WHERE session_id = $1::uuid AND role = 'assistant'", sid
        ), "the live turn was closed as interrupted"
        await runtime_of(a).turn_registry.renew([reply.task_id])  # the owner's next supervisor tick
        await runtime_of(b).supervisor.reap_expired()
        await reply.done()

    assert kinds(reply.frames)[-2:] == ["finish", "[DONE]"]
    assert "error" not in kinds(reply.frames)
    rows = await stored(db, sid)
    assert [role for role, _ in rows] == ["user", "assistant"]
    assert rows[1][1] == reply.text() and len(reply.text().split()) == 150
