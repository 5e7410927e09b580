"""A reply survives a Postgres outage: the service runs on a PostgreSQL of the test's own, which is stopped and
started again while turns stream (DESIGN.md invariant 11). Every reply ends up stored exactly once and after its
own user message; clients get a normal end whenever the store succeeds within the turn.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from backend import keys
from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from tests.conftest import LiveServer
from tests.helpers import wait_for
from tests.own_postgres import OwnPostgres
from tests.sse import chunks
from tests.streams.test_durable_turns import (
    ALICE,
    Reader,
    body_of,
    kinds,
    new_session,
    pod_env,
    read,
    start_pod,
    wait_ready,
)

pytestmark = pytest.mark.slow

SLOW = "[[mock:text tokens=80 delay_ms=25]]"  # two seconds of streaming


@pytest.fixture
async def pg() -> AsyncIterator[OwnPostgres]:
    async with OwnPostgres() as server:
        yield server


def on(pg: OwnPostgres, settings: Settings, **update: object) -> Settings:
    return settings.model_copy(update={"database_url": pg.dsn, "db_pool_min_size": 1, **update})


def send(client: httpx.AsyncClient, sid: str, message: str) -> Reader:
    return read(client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}, headers=ALICE)


async def stored(pg: OwnPostgres, sid: str) -> list[tuple[str, str | None]]:
    conn = await asyncpg.connect(pg.dsn)
    try:
        rows = await conn.fetch(
            "SELECT role, content FROM chat_messages WHERE session_id = $1 ORDER BY sequence", uuid.UUID(sid)
        )
    finally:
        await conn.close()
    return [(r["role"], r["content"]) for r in rows]


def ended_normally(reader: Reader) -> bool:
    return (
        reader.status == 200
        and kinds(reader.frames)[-2:] == ["finish", "[DONE]"]
        and "error" not in kinds(reader.frames)
        and chunks(body_of(reader.frames))[-1]["finishReason"] == "stop"
    )


async def test_a_short_outage_loses_no_reply_and_clients_end_normally(chat_settings: Settings, pg: OwnPostgres) -> None:
    """Postgres goes away while eight replies stream and comes back within the turns' retries."""
    settings = on(pg, chat_settings, store_retry_seconds=60.0)
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
        sids = [await new_session(client) for _ in range(8)]
        readers = [send(client, sid, SLOW) for sid in sids]
        for reader in readers:
            await reader.wait_for_text(3)
        await pg.stop()
        await asyncio.sleep(3.0)  # every reply finishes streaming while Postgres is down
        assert not any(reader.ended_at for reader in readers)  # the turns are still trying to store them
        await pg.start()
        await asyncio.gather(*(reader.done(within=60) for reader in readers))

    for sid, reader in zip(sids, readers, strict=True):
        assert ended_normally(reader), kinds(reader.frames)[-4:]
        assert len(reader.text().split()) == 80
        assert await stored(pg, sid) == [("user", SLOW), ("assistant", reader.text())]


async def test_a_long_outage_ends_the_turns_and_the_reconciler_stores_the_replies(
    chat_settings: Settings, pg: OwnPostgres, redis: Redis
) -> None:
    """Postgres stays away longer than the turns retry: the replies are kept in Redis, a new message meanwhile is
    refused with a clear 503, and once Postgres is back every reply is stored once, before anything newer."""
    settings = on(pg, chat_settings, store_retry_seconds=0.5, reconcile_interval_seconds=0.2)
    message = "[[mock:text tokens=30 delay_ms=20]]"
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
        sids = [await new_session(client) for _ in range(6)]
        readers = [send(client, sid, message) for sid in sids]
        for reader in readers:
            await reader.wait_for_text(3)
        await pg.stop()
        await asyncio.gather(*(reader.done(within=30) for reader in readers))
        for reader in readers:  # the reply is complete and will be stored: a normal end, and a transient notice
            assert ended_normally(reader), kinds(reader.frames)[-4:]
            notices = [c for c in chunks(body_of(reader.frames)) if c["type"] == "data-storage"]
            assert notices == [{"type": "data-storage", "data": {"state": "kept"}, "transient": True}]
        assert await redis.zcard(keys.PENDING_SESSIONS) == len(sids)

        refused = await client.post(f"/api/chat/sessions/{sids[0]}/stream", json={"message": "and now?"}, headers=ALICE)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "service_unavailable"
        assert "database is unavailable" in refused.json()["error"]["message"]

        await asyncio.sleep(1.0)  # several reconciler rounds against a stopped Postgres
        await pg.start()
        for sid, reader in zip(sids, readers, strict=True):
            await wait_for(lambda sid=sid: _answered(pg, sid), within=15)
            assert await stored(pg, sid) == [("user", message), ("assistant", reader.text())]
        assert await redis.zcard(keys.PENDING_SESSIONS) == 0

        after = send(client, sids[0], '[[mock:text content="back again"]]')
        await after.done()
        assert after.text() == "back again"
    assert [role for role, _ in await stored(pg, sids[0])] == ["user", "assistant", "user", "assistant"]


async def test_the_next_message_stores_the_kept_reply_first(chat_settings: Settings, pg: OwnPostgres) -> None:
    """No reconciler round comes in between (it runs once an hour here): the new message's append stores the
    session's kept reply before the message itself."""
    settings = on(pg, chat_settings, store_retry_seconds=0.2, reconcile_interval_seconds=3600)
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
        sid = await new_session(client)
        first = send(client, sid, SLOW)
        await first.wait_for_text(3)
        await pg.stop()
        await first.done()
        await pg.start()
        second = send(client, sid, '[[mock:text content="second"]]')
        await second.done()
        assert second.status == 200 and second.text() == "second"
    assert await stored(pg, sid) == [
        ("user", SLOW),
        ("assistant", first.text()),
        ("user", '[[mock:text content="second"]]'),
        ("assistant", "second"),
    ]


async def test_a_tool_step_that_cannot_be_stored_ends_the_turn_and_is_stored_later(
    chat_settings: Settings, pg: OwnPostgres, mock_llm: MockLLMServer
) -> None:
    """The model is not called again on a history that is not stored: the turn stops after the step, with a clear
    error, and the step (the call and its result) is stored once Postgres is back."""
    settings = on(pg, chat_settings, store_retry_seconds=0.5, reconcile_interval_seconds=0.2)
    message = '[[mock:tool name=calculate args={"expression": "6*7"} delay_ms=150]]'
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
        sid = await new_session(client)
        reader = send(client, sid, message)

        async def tool_started() -> bool:
            return "tool-input-start" in kinds(reader.frames)

        await wait_for(tool_started)  # its arguments still stream, 150 ms a fragment
        await pg.stop()
        await reader.done(within=30)
        model_calls = len(mock_llm.requests)

        assert kinds(reader.frames)[-3:] == ["error", "finish", "[DONE]"]
        body = chunks(body_of(reader.frames))
        assert "tool-output-available" in kinds(reader.frames)
        error = next(c for c in body if c["type"] == "error")
        assert "database is unavailable" in error["errorText"]

        await pg.start()
        await wait_for(lambda: _has(pg, sid, 3), within=15)
        await asyncio.sleep(0.5)
        assert len(mock_llm.requests) == model_calls == 1
    rows = await stored(pg, sid)
    assert [role for role, _ in rows] == ["user", "assistant", "tool"]
    assert rows[2][1] is not None and "42" in rows[2][1]


async def test_replies_kept_by_a_killed_pod_are_stored_by_another(
    chat_settings: Settings, pg: OwnPostgres, redis: Redis, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    """The pod that kept the replies in Redis is SIGKILLed before Postgres returns; another server stores them."""
    env = {
        **pod_env(mock_llm),
        "DATABASE_URL": pg.dsn,
        "COPILOT_STORE_RETRY_SECONDS": "0.5",
        "COPILOT_RECONCILE_INTERVAL_SECONDS": "0.2",
    }
    message = "[[mock:text tokens=30 delay_ms=20]]"
    log_path = tmp_path / "pod.log"
    with log_path.open("wb") as log:
        pod = await start_pod("a", env, log, log_path)
        try:
            await wait_ready(pod)
            sids = [await new_session(pod.client) for _ in range(4)]
            readers = [send(pod.client, sid, message) for sid in sids]
            for reader in readers:
                await reader.wait_for_text(3)
            await pg.stop()
            await asyncio.gather(*(reader.done(within=30) for reader in readers))
            assert await redis.zcard(keys.PENDING_SESSIONS) == len(sids)
        finally:
            pod.kill()
            await pod.process.wait()
            await pod.client.aclose()
    print(log_path.read_text()[-3000:])  # shown when the test fails

    await pg.start()
    for sid in sids:
        assert await stored(pg, sid) == [("user", message)]  # nobody has stored them yet
    settings = on(pg, chat_settings, reconcile_interval_seconds=0.2)
    async with LiveServer(settings):
        for sid, reader in zip(sids, readers, strict=True):
            await wait_for(lambda sid=sid: _answered(pg, sid), within=15)
            assert ended_normally(reader)
            assert await stored(pg, sid) == [("user", message), ("assistant", reader.text())]
    assert await redis.zcard(keys.PENDING_SESSIONS) == 0


async def _answered(pg: OwnPostgres, sid: str) -> bool:
    rows = await stored(pg, sid)
    return bool(rows) and rows[-1][0] == "assistant"


async def _has(pg: OwnPostgres, sid: str, count: int) -> bool:
    return len(await stored(pg, sid)) >= count
