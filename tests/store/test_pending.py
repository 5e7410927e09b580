"""Writes Postgres did not take: kept in Redis, stored once it answers, in order and exactly once.

Against a PostgreSQL of the test's own that is stopped and started mid-test, and the tests' Redis.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from backend import keys
from backend.errors import StorageUnavailable
from backend.store.cache import SessionCache
from backend.store.models import NewMessage
from backend.store.pending import PendingAppend, PendingWrites
from backend.store.postgres import ChatRepository, create_pool
from backend.store.reconciler import Reconciler
from backend.store.sessions import SessionStore
from tests.own_postgres import OwnPostgres


class Pod:
    """What one pod has of the store: its own pool, the shared Redis."""

    def __init__(self, store: SessionStore, repo: ChatRepository, pending: PendingWrites) -> None:
        self.store, self.repo, self.pending = store, repo, pending
        self.reconciler = Reconciler(store, pending)


@pytest.fixture
async def pg() -> AsyncIterator[OwnPostgres]:
    async with OwnPostgres() as server:
        yield server


@pytest.fixture
async def pods(pg: OwnPostgres, redis: Redis) -> AsyncIterator[tuple[Pod, Pod]]:
    made: list[Pod] = []
    pools = []
    for _ in range(2):
        pool = await create_pool(pg.dsn, min_size=1, max_size=5)
        pools.append(pool)
        repo = ChatRepository(pool)
        pending = PendingWrites(redis)
        made.append(Pod(SessionStore(repo, SessionCache(redis, ttl_seconds=60), pending), repo, pending))
    yield made[0], made[1]
    for pool in pools:
        pool.terminate()


def user(text: str) -> NewMessage:
    return NewMessage("user", text, client_message_id=text, token_count=1)


def reply(turn: str, step: int, text: str) -> list[NewMessage]:
    return [NewMessage("assistant", text, write_key=f"{turn}:{step}:0", token_count=2)]


def tool_step(turn: str, step: int) -> list[NewMessage]:
    calls = [{"id": f"c{step}", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
    return [
        NewMessage("assistant", None, tool_calls=calls, write_key=f"{turn}:{step}:0", token_count=2),
        NewMessage("tool", "42", tool_call_id=f"c{step}", write_key=f"{turn}:{step}:1", token_count=1),
    ]


async def contents(repo: ChatRepository, session_id: uuid.UUID) -> list[tuple[str, str | None]]:
    return [(m.role, m.content) for m in await repo.get_messages(session_id)]


async def test_a_step_postgres_does_not_take_is_kept_and_stored_before_the_next_message(
    pods: tuple[Pod, Pod], pg: OwnPostgres, redis: Redis
) -> None:
    pod, _ = pods
    session = await pod.store.create("alice")
    await pod.store.append(session.id, [user("question")])
    await pg.stop()

    kept = await pod.store.append_or_keep(
        session.id, reply("t1", 0, "the answer"), prompt_tokens=7, completion_tokens=3, retry_seconds=0.5
    )

    assert kept is None
    assert await pod.pending.sessions() == [session.id]
    with pytest.raises(StorageUnavailable) as refused:
        await pod.store.append(session.id, [user("next question")])
    assert refused.value.status_code == 503 and refused.value.code == "service_unavailable"
    assert await redis.llen(keys.session_pending_writes(session.id)) == 1  # the refused message is not kept
    with pytest.raises(StorageUnavailable):  # reads too: one error type, not asyncpg's or OSError
        await pod.repo.get_session(session.id)

    await pg.start()
    await pod.store.append(session.id, [user("next question")])

    assert await contents(pod.repo, session.id) == [
        ("user", "question"),
        ("assistant", "the answer"),
        ("user", "next question"),
    ]
    row = await pod.repo.get_session(session.id)
    assert row is not None and (row.prompt_tokens, row.completion_tokens) == (7, 3)
    assert not await pod.pending.any(session.id) and await pod.pending.sessions() == []
    cached = [(m.role, m.content) for m in await pod.store.messages(session.id)]
    assert cached == await contents(pod.repo, session.id)


async def test_the_reconciler_stores_kept_writes_in_order_exactly_once_from_two_pods(
    pods: tuple[Pod, Pod], pg: OwnPostgres
) -> None:
    a, b = pods
    sessions = [await a.store.create("alice") for _ in range(6)]
    for s in sessions:
        await a.store.append(s.id, [user(f"q-{s.id}")])
    await pg.stop()
    for n, s in enumerate(sessions):
        if n == 0:  # a tool step kept, then the partial reply of the turn's next step (cancelled)
            assert await a.store.append_or_keep(s.id, tool_step(f"t{n}", 0), retry_seconds=0) is None
        assert await a.store.append_or_keep(s.id, reply(f"t{n}", 1, f"a-{n}"), retry_seconds=0) is None
    # A pod that stored a kept write and died before removing it: the copy is stored again, harmlessly.
    await pg.start()
    await a.repo.append_messages(sessions[5].id, reply("t5", 1, "a-5"))
    await pg.stop()

    await asyncio.gather(a.reconciler.run_once(), b.reconciler.run_once())  # still down: nothing moves
    assert len(await a.pending.sessions()) == 6

    await pg.start()
    for _ in range(3):  # two pods' rounds, interleaved
        await asyncio.gather(a.reconciler.run_once(), b.reconciler.run_once())

    for n, s in enumerate(sessions):
        expected = [("user", f"q-{s.id}")]
        if n == 0:
            expected += [("assistant", None), ("tool", "42")]
        expected.append(("assistant", f"a-{n}"))
        assert await contents(a.repo, s.id) == expected
    assert await a.pending.sessions() == []


async def test_a_step_cancelled_while_it_is_retried_is_kept(pods: tuple[Pod, Pod], pg: OwnPostgres) -> None:
    pod, _ = pods
    session = await pod.store.create("alice")
    await pod.store.append(session.id, [user("question")])
    await pg.stop()
    saving = asyncio.create_task(pod.store.append_or_keep(session.id, reply("t", 0, "almost"), retry_seconds=60))
    await asyncio.sleep(0.5)
    assert not saving.done() and not await pod.pending.any(session.id)  # still retrying
    saving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await saving
    assert await pod.pending.any(session.id)

    await pg.start()
    await pod.reconciler.run_once()
    assert await contents(pod.repo, session.id) == [("user", "question"), ("assistant", "almost")]


async def test_a_retry_that_succeeds_within_the_window_keeps_nothing(pods: tuple[Pod, Pod], pg: OwnPostgres) -> None:
    pod, _ = pods
    session = await pod.store.create("alice")
    await pod.store.append(session.id, [user("question")])
    await pg.stop()
    saving = asyncio.create_task(pod.store.append_or_keep(session.id, reply("t", 0, "in time"), retry_seconds=60))
    await asyncio.sleep(1.0)
    await pg.start()
    result = await saving
    assert result is not None and [m.content for m in result.messages] == ["in time"]
    assert not await pod.pending.any(session.id)
    assert await contents(pod.repo, session.id) == [("user", "question"), ("assistant", "in time")]


def test_a_pending_append_round_trips() -> None:
    append = PendingAppend(tuple(tool_step("t", 3)), prompt_tokens=5, completion_tokens=1)
    assert PendingAppend.decode(append.encode()) == append
    usage = {"prompt_tokens": 5, "completion_tokens": 1, "cached_tokens": 0, "reasoning_tokens": 1}
    kept = NewMessage("assistant", "a", reasoning="r", model="m", usage=usage, write_key="t:0:0")
    assert PendingAppend.decode(PendingAppend((kept,)).encode()).messages == (kept,)
