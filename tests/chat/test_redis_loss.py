"""Redis loses its data (FLUSHALL, or a restart without persistence) in the middle of things: the one-turn-per-session
guard and pending operations hold, because Postgres is the truth and Redis only the fast path (DESIGN.md #11).

Every test here runs the service against a redis-server of its own, on its own port and without persistence, so
flushing or restarting it touches nobody else.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from backend import keys
from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from backend.store.models import ActiveTurnClaim, NewMessage
from backend.store.sessions import SessionStore
from tests.api.test_chat_stream import ALICE, new_session, send, stored, turn_calls
from tests.chat.test_operations import REPORT, SECRET, post_webhook, start_operation
from tests.conftest import LiveServer
from tests.helpers import wait_for
from tests.redis_server import PrivateRedis, private_redis_server
from tests.streams.test_durable_turns import Reader, kinds, pod_env, read, two_pods


@pytest.fixture
async def private_redis() -> AsyncIterator[tuple[PrivateRedis, Redis]]:
    async with private_redis_server() as started:
        yield started


@pytest.fixture
def loss_settings(chat_settings: Settings, private_redis: tuple[PrivateRedis, Redis]) -> Settings:
    server, _ = private_redis
    return chat_settings.model_copy(
        update={
            "redis_url": server.url,
            "webhook_secret": SecretStr(SECRET),
            "tools": ["tests.chat.long_tools:registry"],
            "heartbeat_seconds": 0.5,
            "turn_lease_seconds": 1.0,
            "completion_reclaim_idle_seconds": 0.5,
        }
    )


@pytest.fixture
async def service(loss_settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, LiveServer]]:
    async with LiveServer(loss_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client, live


# --- helpers -------------------------------------------------------------------------------------------------------


def start_turn(client: httpx.AsyncClient, sid: str, message: str) -> Reader:
    return read(client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}, headers=ALICE)


async def until(reader: Reader, seen: Callable[[list[str]], bool], within: float = 15) -> None:
    async with asyncio.timeout(within):
        while not seen(kinds(reader.frames)):
            assert reader._task is not None
            if reader._task.done():
                raise AssertionError(f"the stream ended before the moment came: {kinds(reader.frames)}")
            await asyncio.sleep(0.005)


async def active_turn(db: asyncpg.Connection, sid: str) -> str | None:
    value: str | None = await db.fetchval("SELECT active_turn_id FROM chat_sessions WHERE id = $1", uuid.UUID(sid))
    return value


async def free(db: asyncpg.Connection, sid: str) -> bool:
    return await active_turn(db, sid) is None


async def roles(db: asyncpg.Connection, sid: str) -> list[str]:
    return [r["role"] for r in await stored(db, sid)]


def assert_one_turn_at_a_time(history: list[str]) -> None:
    """Every user message is answered before the next one arrives: two turns at once would store user, user,
    assistant, assistant."""
    assert history and history[0] == "user" and history[-1] != "user", history
    assert all(not (a == b == "user") for a, b in itertools.pairwise(history)), history


async def second_message(client: httpx.AsyncClient, sid: str) -> httpx.Response:
    """A message sent while the first turn may still run (the double-texting policy is `reject`)."""
    return await client.post(
        f"/api/chat/sessions/{sid}/stream", json={"message": '[[mock:text content="second"]]'}, headers=ALICE
    )


# --- the one-turn-per-session guard --------------------------------------------------------------------------------


async def test_the_turn_holds_its_session_in_postgres_until_it_ends(
    service: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = service
    sid = await new_session(client)
    reader = start_turn(client, sid, "[[mock:text tokens=40 delay_ms=20]]")
    await reader.wait_for_text()
    holder = await db.fetchrow(
        "SELECT active_turn_id, active_turn_until > now() AS live FROM chat_sessions WHERE id = $1", uuid.UUID(sid)
    )
    assert holder is not None and holder["active_turn_id"] == reader.task_id and holder["live"]
    await reader.done()
    assert await free(db, sid)  # freed before the end reached the client
    response, _ = await send(client, sid, '[[mock:text content="next"]]')
    assert response.status_code == 200


async def test_after_flushall_a_second_message_is_refused_while_the_turn_runs(
    service: tuple[httpx.AsyncClient, LiveServer], private_redis: tuple[PrivateRedis, Redis], db: asyncpg.Connection
) -> None:
    client, _ = service
    _, redis = private_redis
    sid = await new_session(client)
    first = start_turn(client, sid, "[[mock:text tokens=60 delay_ms=20]]")
    await first.wait_for_text()
    await redis.flushall()
    assert not await redis.exists(keys.active_turn(uuid.UUID(sid)))  # the fast path forgot the turn

    refused = await second_message(client, sid)
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["details"]["active_task_id"] == first.task_id
    await first.done()
    await wait_for(lambda: free(db, sid))
    assert await roles(db, sid) == ["user", "assistant"]  # nothing of the refused message was stored
    assert len(((await stored(db, sid))[-1]["content"] or "").split()) == 60  # the turn went on to its end

    after, _ = await send(client, sid, '[[mock:text content="after"]]')
    assert after.status_code == 200
    assert await roles(db, sid) == ["user", "assistant", "user", "assistant"]


MOMENTS: dict[str, tuple[str, Callable[[list[str]], bool], bool]] = {
    # name: (the first message, when to flush, whether the turn surely still runs then)
    "before-the-model-call": (
        "[[mock:stall after=1 seconds=0.6]] [[mock:text tokens=5]]",
        lambda k: "start-step" in k,
        True,
    ),
    "mid-stream": ("[[mock:text tokens=60 delay_ms=15]]", lambda k: k.count("text-delta") >= 5, True),
    "during-tools": ('[[mock:tool name=pause args={"seconds": 1}]]', lambda k: "tool-input-available" in k, True),
    "at-the-end": ("[[mock:text tokens=10 delay_ms=5]]", lambda k: "finish" in k, False),
}


async def test_flushall_at_any_moment_never_lets_two_turns_run(
    service: tuple[httpx.AsyncClient, LiveServer], private_redis: tuple[PrivateRedis, Redis], db: asyncpg.Connection
) -> None:
    client, _ = service
    _, redis = private_redis
    for _ in range(2):
        for name, (message, moment, running) in MOMENTS.items():
            sid = await new_session(client)
            first = start_turn(client, sid, message)
            await until(first, moment)
            await redis.flushall()
            second = await second_message(client, sid)
            if running:
                assert second.status_code == 409, (name, second.text)
            else:
                assert second.status_code in (200, 409), (name, second.text)
            if second.status_code == 409:
                assert second.json()["error"]["details"]["active_task_id"] == first.task_id, name
            await first.done()
            await wait_for(lambda sid=sid: free(db, sid))
            history = await roles(db, sid)
            assert_one_turn_at_a_time(history)
            if second.status_code == 409:
                assert history.count("user") == 1, (name, history)

            # The session is free again, in Redis and in Postgres: the next message is answered.
            after, _ = await send(client, sid, '[[mock:text content="after"]]')
            assert after.status_code == 200, (name, after.text)
            assert_one_turn_at_a_time(await roles(db, sid))


async def test_a_restart_without_persistence_mid_turn_keeps_the_guard(
    service: tuple[httpx.AsyncClient, LiveServer], private_redis: tuple[PrivateRedis, Redis], db: asyncpg.Connection
) -> None:
    client, _ = service
    server, _ = private_redis
    sid = await new_session(client)
    first = start_turn(client, sid, "[[mock:text tokens=80 delay_ms=20]]")
    await first.wait_for_text()
    await server.restart()

    refused = await second_message(client, sid)
    assert refused.status_code == 409, refused.text
    await first.done()
    await wait_for(lambda: free(db, sid))
    assert await roles(db, sid) == ["user", "assistant"]
    after, _ = await send(client, sid, '[[mock:text content="after"]]')
    assert after.status_code == 200
    assert await roles(db, sid) == ["user", "assistant", "user", "assistant"]


async def test_a_resend_of_the_running_message_after_flushall_starts_nothing(
    service: tuple[httpx.AsyncClient, LiveServer],
    private_redis: tuple[PrivateRedis, Redis],
    db: asyncpg.Connection,
    mock_llm: MockLLMServer,
) -> None:
    client, _ = service
    _, redis = private_redis
    sid = await new_session(client)
    body = {"message": "[[mock:text tokens=60 delay_ms=20]]", "client_message_id": "m-1"}
    first = read(client, "POST", f"/api/chat/sessions/{sid}/stream", json=body, headers=ALICE)
    await first.wait_for_text()
    calls = len(turn_calls(mock_llm))
    await redis.flushall()

    again = read(client, "POST", f"/api/chat/sessions/{sid}/stream", json=body, headers=ALICE)
    await asyncio.gather(first.done(), again.done())
    assert again.status == 200 and again.task_id == first.task_id
    assert len(turn_calls(mock_llm)) == calls  # the same turn, not a second run of it
    await wait_for(lambda: free(db, sid))
    assert await roles(db, sid) == ["user", "assistant"]


async def test_a_dead_owners_turn_is_reaped_through_its_postgres_lease(
    service: tuple[httpx.AsyncClient, LiveServer], private_redis: tuple[PrivateRedis, Redis], db: asyncpg.Connection
) -> None:
    """A pod stored a message and claimed the session, then died; Redis then lost everything it knew of the turn.
    Only Postgres remembers: the session stays busy until the lease lapses, then any pod frees it."""
    client, live = service
    _, redis = private_redis
    sessions: SessionStore = live.app.state.runtime.sessions
    sid = await new_session(client)
    await sessions.append(uuid.UUID(sid), [NewMessage("user", "hello?")], claim=ActiveTurnClaim("dead-turn", 2.0))
    await redis.flushall()

    refused = await second_message(client, sid)
    assert refused.status_code == 409
    assert refused.json()["error"]["details"]["active_task_id"] == "dead-turn"
    await wait_for(lambda: free(db, sid), within=10)  # the supervisor found the lapsed lease

    after, _ = await send(client, sid, '[[mock:text content="answered"]]')
    assert after.status_code == 200
    assert await roles(db, sid) == ["user", "user", "assistant"]  # the dead turn never answered


async def test_cancel_after_flushall_still_stops_the_turn(
    service: tuple[httpx.AsyncClient, LiveServer], private_redis: tuple[PrivateRedis, Redis], db: asyncpg.Connection
) -> None:
    client, _ = service
    _, redis = private_redis
    sid = await new_session(client)
    first = start_turn(client, sid, "[[mock:text tokens=300 delay_ms=20]]")
    await first.wait_for_text()
    await redis.flushall()

    r = await client.post(f"/api/chat/sessions/{sid}/cancel", headers=ALICE)
    assert r.status_code == 200 and r.json()["task_id"] == first.task_id
    await first.done()
    assert await free(db, sid)
    [(role, content)] = [(r["role"], r["content"]) for r in await stored(db, sid) if r["role"] != "user"]
    assert role == "assistant" and content.endswith("[interrupted]") and len(content.split()) < 300


@pytest.mark.slow
async def test_a_pod_killed_after_flushall_holds_the_session_until_its_lease_lapses(
    private_redis: tuple[PrivateRedis, Redis], db: asyncpg.Connection, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    server, redis = private_redis
    env = {**pod_env(mock_llm), "REDIS_URL": server.url, "COPILOT_TURN_LEASE_SECONDS": "4"}
    async with two_pods(env, tmp_path) as (a, b):
        sid = await new_session(a.client)
        origin = read(a.client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": SLOW}, headers=ALICE)
        await origin.wait_for_text()
        await redis.flushall()
        a.kill()

        refused = await second_message(b.client, sid)
        assert refused.status_code == 409
        assert refused.json()["error"]["details"]["active_task_id"] == origin.task_id
        await wait_for(lambda: free(db, sid), within=20)  # pod B reaped it through Postgres

        after = read(
            b.client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": "[[mock:text]]"}, headers=ALICE
        )
        await after.done()
        assert after.status == 200
        # The dead pod's unfinished reply was only in its stream, which the flush took: its message stays unanswered,
        # and the next one is answered alone (two turns at once would have stored user, user, assistant, assistant).
        assert await roles(db, sid) == ["user", "user", "assistant"]


SLOW = "[[mock:text tokens=1000 delay_ms=20]]"


# --- pending operations ----------------------------------------------------------------------------------------------


async def tool_result(db: asyncpg.Connection, sid: str) -> Any:
    [row] = [r for r in await stored(db, sid) if r["role"] == "tool"]
    return orjson.loads(row["content"])


async def replies(db: asyncpg.Connection, sid: str) -> int:
    return sum(r["role"] == "assistant" and not r["tool_calls"] for r in await stored(db, sid))


def at_least(count: Callable[[], Awaitable[int]], n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await count() >= n

    return check


async def jobs_waiting(redis: Redis) -> bool:
    return bool(await redis.xlen(keys.jobs("report")))


async def test_a_pending_operation_is_completed_by_its_webhook_after_flushall(
    service: tuple[httpx.AsyncClient, LiveServer],
    private_redis: tuple[PrivateRedis, Redis],
    db: asyncpg.Connection,
    mock_llm: MockLLMServer,
) -> None:
    client, _ = service
    _, redis = private_redis
    sid = await new_session(client)
    started = await start_operation(client, sid, REPORT)
    op_id = started["operation_id"]
    await wait_for(lambda: jobs_waiting(redis))  # the service took the job ...
    await redis.flushall()  # ... and Redis forgot everything about the operation meanwhile
    calls = len(turn_calls(mock_llm))

    response = await post_webhook(client, op_id, {"success": True, "result": {"summary": "cats sleep a lot"}})
    assert response.status_code == 202, response.text
    await wait_for(lambda: at_least(lambda: replies(db, sid), 2)())
    assert await tool_result(db, sid) == {"summary": "cats sleep a lot"}
    assert await roles(db, sid) == ["user", "assistant", "tool", "assistant", "assistant"]
    [continuation] = turn_calls(mock_llm)[calls:]
    assert continuation["messages"][-1]["content"].startswith(
        f'<operation_finished tool="generate_report" operation_id="{op_id}">'
    )
    status = await db.fetchval("SELECT status FROM chat_operations WHERE id = $1", op_id)
    assert status == "completed"
    await wait_for(lambda: free(db, sid))

    # The service retries: nothing changes.
    assert (await post_webhook(client, op_id, {"success": True, "result": {"summary": "again"}})).status_code == 202
    await asyncio.sleep(0.5)
    assert await tool_result(db, sid) == {"summary": "cats sleep a lot"}
    assert await replies(db, sid) == 2


async def test_an_operation_past_its_deadline_after_flushall_fails_with_a_clear_error(
    loss_settings: Settings, private_redis: tuple[PrivateRedis, Redis], db: asyncpg.Connection
) -> None:
    _, redis = private_redis
    settings = loss_settings.model_copy(update={"delegated_operation_timeout_seconds": 1.0})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        started = await start_operation(client, sid, REPORT)  # no service ever answers
        await wait_for(lambda: jobs_waiting(redis))
        await asyncio.sleep(0.2)  # the tool has returned `accepted`: the deadline is now a second away
        await redis.flushall()

        error = {"error": {"type": "operation_failed", "message": "the operation did not finish in time"}}

        async def failed() -> bool:
            return bool(await tool_result(db, sid) == error)

        await wait_for(failed, within=20)  # the overdue check runs every 5 s
        await wait_for(lambda: at_least(lambda: replies(db, sid), 2)())
        status = await db.fetchval("SELECT status FROM chat_operations WHERE id = $1", started["operation_id"])
        assert status == "failed"
        await wait_for(lambda: free(db, sid))
