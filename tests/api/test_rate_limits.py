"""Per-user limits end to end: live servers on the tests' Redis and Postgres, JWT users, the mock model. Requests per
minute, concurrent turns (every way a turn ends gives its slot back, a dead pod's slot lapses), tokens per UTC day,
admins exempt, two servers sharing the counts, the WebSocket, and limits turned off."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from backend import keys
from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from backend.runtime import Runtime
from tests.conftest import LiveServer, auth, make_token
from tests.helpers import wait_for
from tests.sse import chunks, read_stream, text_of, types
from tests.streams.test_durable_turns import pod_env, two_pods

ALICE, BOB = auth("alice"), auth("bob")
ADMIN = auth("root", roles=["admin"])
SLOW = "[[mock:text tokens=300 delay_ms=20]]"
"""A reply of about 6 s: it runs while the test does its work (the server cancels it at shutdown)."""
Chat = tuple[httpx.AsyncClient, LiveServer]


def limited(settings: Settings, **limits: Any) -> Settings:
    """`settings` with the given per-user limits (`requests_per_minute=3`, `admins=True`, ...), the others off."""
    off = {"rate_limit_requests_per_minute": 0, "rate_limit_concurrent_turns": 0, "rate_limit_tokens_per_day": 0}
    return settings.model_copy(update={**off, **{f"rate_limit_{name}": value for name, value in limits.items()}})


@asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Chat]:
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client, live


def runtime_of(live: LiveServer) -> Runtime:
    runtime: Runtime = live.app.state.runtime
    return runtime


async def new_session(client: httpx.AsyncClient, headers: dict[str, str] = ALICE, title: str | None = "t") -> str:
    # Titled by default, so the title writer (another model call) stays out of the way.
    r = await client.post("/api/chat/sessions", json={"title": title}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def start(
    client: httpx.AsyncClient, sid: str, message: str, headers: dict[str, str] = ALICE, **extra: Any
) -> httpx.Response:
    """Send a message and stop reading at once (the turn goes on without a reader); a refusal's body is read."""
    body = {"message": message, **extra}
    async with client.stream("POST", f"/api/chat/sessions/{sid}/stream", json=body, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
    return response


async def finish(client: httpx.AsyncClient, sid: str, message: str, headers: dict[str, str] = ALICE) -> bytes:
    """Send a message and read its reply to the end."""
    response, body = await read_stream(
        client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}, headers=headers
    )
    assert response.status_code == 200, body
    return body


def refused(response: httpx.Response, limit: str) -> dict[str, Any]:
    """The error of a 429 for `limit`, after checking its `Retry-After` header."""
    assert response.status_code == 429, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "rate_limited" and error["details"]["limit"] == limit, error
    assert int(response.headers["retry-after"]) == error["details"]["retry_after"] >= 1
    return error


async def live_slots(redis: Redis, user: str) -> int:
    """Slots of the user's running turns whose lease has not lapsed."""
    return int(await redis.zcount(keys.user_turns(user), time.time() * 1000, "+inf"))


async def stored(db: asyncpg.Connection, sid: str) -> list[str]:
    rows = await db.fetch("SELECT role FROM chat_messages WHERE session_id = $1 ORDER BY sequence", uuid.UUID(sid))
    return [r["role"] for r in rows]


def seconds_to_utc_midnight() -> float:
    now = datetime.now(UTC)
    return (datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1) - now).total_seconds()


# --- requests per minute --------------------------------------------------------------------------------------------


async def test_the_request_over_the_limit_per_minute_gets_429_and_loses_nothing(
    chat_settings: Settings, db: asyncpg.Connection
) -> None:
    async with serving(limited(chat_settings, requests_per_minute=3)) as (client, _):
        for _ in range(5):  # not counted: health checks, the panel page and its assets
            for path in ("/health/live", "/health/ready", "/", "/static/js/api.js"):
                assert (await client.get(path)).status_code == 200
        for _ in range(3):
            assert (await client.get("/api/chat/sessions", headers=ALICE)).status_code == 200

        r = await client.post("/api/chat/sessions", json={"title": "never"}, headers=ALICE)
        error = refused(r, "requests_per_minute")
        assert 50 <= int(r.headers["retry-after"]) <= 60
        assert error["message"].startswith("Too many requests: at most 3 a minute. Try again in ")
        assert await db.fetchval("SELECT count(*) FROM chat_sessions WHERE user_id = 'alice'") == 0
        refused(await client.get("/api/chat/sessions", headers=ALICE), "requests_per_minute")
        assert (await client.get("/api/chat/sessions", headers=BOB)).status_code == 200  # per user
        assert (await client.get("/api/chat/sessions")).status_code == 401  # no user, nothing to count


# --- concurrent turns -----------------------------------------------------------------------------------------------


async def test_turns_over_the_concurrent_limit_get_429_and_every_end_gives_the_slot_back(
    chat_settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    async with serving(limited(chat_settings, concurrent_turns=2)) as (client, _):
        s1, s2, s3, s4 = [await new_session(client) for _ in range(4)]
        first = await start(client, s1, SLOW, client_message_id="m1")
        assert first.status_code == 200 and (await start(client, s2, SLOW)).status_code == 200
        assert await live_slots(redis, "alice") == 2

        r = await start(client, s3, "hello")
        error = refused(r, "concurrent_turns")
        assert r.headers["retry-after"] == "5"
        assert "at most 2 can be generated at the same time" in error["message"]
        assert await stored(db, s3) == []  # the refused message was not stored
        assert (await start(client, s3, "hi", headers=BOB)).status_code == 404  # another user's session, not a 429
        bob = await new_session(client, BOB)
        assert (await start(client, bob, "hi", headers=BOB)).status_code == 200  # per user

        again = await start(client, s1, SLOW, client_message_id="m1")  # a resend joins its turn: no slot needed
        assert again.status_code == 200
        assert again.headers["x-copilot-task-id"] == first.headers["x-copilot-task-id"]
        assert await live_slots(redis, "alice") == 2

        cancel = await client.post(f"/api/chat/sessions/{s1}/cancel", headers=ALICE)  # cancelled
        assert cancel.json()["status"] == "cancelled"
        assert await live_slots(redis, "alice") == 1
        completed = await finish(client, s3, '[[mock:text content="done"]]')  # completed
        assert text_of(completed) == "done" and await live_slots(redis, "alice") == 1
        failed = await finish(client, s4, "[[mock:server_error]]")  # failed
        assert "error" in types(failed) and await live_slots(redis, "alice") == 1
        assert await stored(db, s3) == ["user", "assistant"]
    # shut down while s2 still ran (interrupted): its slot was given back too
    assert await redis.zcard(keys.user_turns("alice")) == 0


async def test_a_client_that_saw_a_reply_end_may_send_its_next_message_at_once(chat_settings: Settings) -> None:
    # The slot goes back in the same round trip as the end, ahead of it: at a limit of one, reply after reply
    # sent the moment the last one ended is never refused.
    async with serving(limited(chat_settings, concurrent_turns=1)) as (client, _):
        sessions = [await new_session(client) for _ in range(10)]
        for sid in sessions:
            assert text_of(await finish(client, sid, '[[mock:text content="done"]]')) == "done"


async def test_a_continuation_is_never_refused_but_holds_a_slot_while_it_runs(
    chat_settings: Settings, redis: Redis
) -> None:
    settings = limited(chat_settings, concurrent_turns=1).model_copy(
        update={"tools": ["tests.chat.long_tools:registry"]}
    )
    async with serving(settings) as (client, _):
        s1, s2, s3 = [await new_session(client) for _ in range(3)]
        body = await finish(client, s1, '[[mock:tool name=slow_echo args={"text": "hi", "seconds": 1.5}]]')
        [started] = [c["output"] for c in chunks(body) if c["type"] == "tool-output-available"]
        assert started["type"] == "operation_started" and await live_slots(redis, "alice") == 0
        assert (await start(client, s2, SLOW)).status_code == 200  # takes the only slot before the result arrives

        response, continuation = await read_stream(
            client, "GET", f"/api/chat/tasks/{started['task_id']}/stream", headers=ALICE
        )
        assert response.status_code == 200 and "hi" in text_of(continuation)  # the result was told, over the limit
        assert chunks(continuation)[-1]["finishReason"] == "stop"
        assert await live_slots(redis, "alice") == 1  # the continuation gave its slot back; s2 still runs
        refused(await start(client, s3, "hello"), "concurrent_turns")


async def test_the_slot_of_a_pod_that_died_lapses_after_the_lease(
    db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    env = {**pod_env(mock_llm), "COPILOT_RATE_LIMIT_CONCURRENT_TURNS": "1", "COPILOT_TURN_LEASE_SECONDS": "2"}
    async with two_pods(env, tmp_path) as (a, b):
        s1 = await new_session(a.client)
        s2 = await new_session(b.client)
        assert (await start(a.client, s1, SLOW)).status_code == 200
        refused(await start(b.client, s2, "hello"), "concurrent_turns")  # the other pod sees the slot
        a.kill()  # no shutdown hook runs: the slot is left in Redis, and nobody renews it any more
        killed = time.monotonic()
        while (r := await start(b.client, s2, "hello")).status_code == 429:
            assert time.monotonic() - killed < 10, "the dead pod's slot never lapsed"
            await asyncio.sleep(0.2)
        assert r.status_code == 200
        assert time.monotonic() - killed >= 0.5  # it did count for a while after the kill


# --- tokens per day -------------------------------------------------------------------------------------------------


async def test_a_spent_token_budget_refuses_new_turns_until_midnight_utc(
    chat_settings: Settings, db: asyncpg.Connection
) -> None:
    async with serving(limited(chat_settings, tokens_per_day=1)) as (client, live):
        limits = runtime_of(live).limits
        sid = await new_session(client, title=None)  # untitled: the title's model call is spent for alice too
        await finish(client, sid, "hello")  # admitted below the budget, and may cross it

        async def titled() -> bool:
            return (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()["title"] is not None

        await wait_for(titled)
        turn_tokens = (await client.get(f"/api/chat/sessions/{sid}/usage", headers=ALICE)).json()["total_tokens"]
        assert turn_tokens > 0

        async def title_counted() -> bool:
            return await limits.tokens_today("alice") > turn_tokens

        await wait_for(title_counted)

        other = await new_session(client)
        r = await start(client, other, "again")
        error = refused(r, "tokens_per_day")
        assert abs(int(r.headers["retry-after"]) - seconds_to_utc_midnight()) <= 5
        assert "model tokens is used up" in error["message"] and "midnight UTC" in error["message"]
        assert await stored(db, other) == []
        assert (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).status_code == 200  # reading is fine
        bob = await new_session(client, BOB)
        assert (await start(client, bob, "hi", headers=BOB)).status_code == 200  # per user


async def test_the_summaries_of_a_users_session_are_spent_for_that_user(
    chat_settings: Settings, mock_llm: MockLLMServer
) -> None:
    small_window = {
        "context_window_tokens": 3000,
        "reserved_output_tokens": 200,
        "compaction_soft_ratio": 0.5,
        "compaction_hard_ratio": 0.7,
        "compaction_target_ratio": 0.3,
        "summary_max_input_tokens": 1500,
    }
    settings = limited(chat_settings, tokens_per_day=10**9).model_copy(update=small_window)
    async with serving(settings) as (client, live):
        sid = await new_session(client)  # titled: no title call
        for i in range(8):
            await finish(client, sid, f"question {i} [[mock:text tokens=150]]")
        assert any("<new_messages>" in str(r["messages"]) for r in mock_llm.requests if not r.get("stream"))
        turns = (await client.get(f"/api/chat/sessions/{sid}/usage", headers=ALICE)).json()["total_tokens"]
        limits = runtime_of(live).limits

        async def summaries_counted() -> bool:  # the session's usage holds its turns' calls only
            return await limits.tokens_today("alice") > turns

        await wait_for(summaries_counted)


# --- who is limited, and where --------------------------------------------------------------------------------------


async def test_admins_are_exempt_unless_the_limits_apply_to_admins(chat_settings: Settings, redis: Redis) -> None:
    strict = limited(chat_settings, requests_per_minute=2, concurrent_turns=1, tokens_per_day=1)
    async with serving(strict) as (client, _):
        s1, s2 = await new_session(client, ADMIN), await new_session(client, ADMIN)
        assert (await start(client, s1, SLOW, headers=ADMIN)).status_code == 200
        assert (await start(client, s2, SLOW, headers=ADMIN)).status_code == 200
        for _ in range(5):
            assert (await client.get("/api/chat/sessions", headers=ADMIN)).status_code == 200
        assert not await redis.exists(keys.user_requests("root"))
        for _ in range(2):
            assert (await client.get("/api/chat/sessions", headers=ALICE)).status_code == 200
        refused(await client.get("/api/chat/sessions", headers=ALICE), "requests_per_minute")

    async with serving(strict.model_copy(update={"rate_limit_admins": True})) as (client, _):
        for _ in range(2):
            assert (await client.get("/api/chat/sessions", headers=ADMIN)).status_code == 200
        refused(await client.get("/api/chat/sessions", headers=ADMIN), "requests_per_minute")


async def test_the_development_demo_is_not_limited(chat_settings: Settings) -> None:
    demo = limited(chat_settings, requests_per_minute=1, concurrent_turns=1, tokens_per_day=1)
    async with serving(demo.model_copy(update={"dev_auth": True})) as (client, _):  # the dev user is an admin
        for _ in range(3):
            sid = (await client.post("/api/chat/sessions", json={})).json()["id"]
            assert (await start(client, sid, SLOW, headers={})).status_code == 200
            assert (await client.get(f"/api/chat/sessions/{sid}")).status_code == 200


async def test_two_servers_on_one_redis_share_the_counts(chat_settings: Settings) -> None:
    settings = limited(chat_settings, requests_per_minute=4, concurrent_turns=1)
    async with serving(settings) as (a, _), serving(settings) as (b, _):
        sa, sb = await new_session(a), await new_session(b)  # requests 1 and 2
        assert (await start(a, sa, SLOW)).status_code == 200  # 3: a turn on server a
        refused(await start(b, sb, "hello"), "concurrent_turns")  # 4: server b counts a's turn
        refused(await a.get("/api/chat/sessions", headers=ALICE), "requests_per_minute")
        refused(await b.get("/api/chat/sessions", headers=ALICE), "requests_per_minute")


async def test_over_the_websocket_a_refusal_is_an_error_frame_with_retry_after(
    chat_settings: Settings, db: asyncpg.Connection
) -> None:
    async with serving(limited(chat_settings, concurrent_turns=1, requests_per_minute=5)) as (client, live):
        busy, sid = await new_session(client), await new_session(client)  # requests 1, 2
        assert (await start(client, busy, SLOW)).status_code == 200  # 3
        url = f"ws://127.0.0.1:{live.port}/api/chat/sessions/{sid}/ws?token={make_token('alice')}"
        async with connect(url, proxy=None, open_timeout=5) as ws:  # 4
            await ws.send(orjson.dumps({"type": "message", "message": "hello"}).decode())  # 5
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert frame["type"] == "error" and frame["code"] == "rate_limited"
            assert frame["retry_after"] == 5 and frame["details"]["limit"] == "concurrent_turns"
            await ws.send(orjson.dumps({"type": "message", "message": "hello"}).decode())  # 6: over the minute's 5
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert (frame["code"], frame["details"]["limit"]) == ("rate_limited", "requests_per_minute")
            assert 50 <= frame["retry_after"] <= 60
            await ws.send(orjson.dumps({"type": "ping"}).decode())  # the socket stays open
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
        with pytest.raises(ConnectionClosed) as closed:
            async with connect(url, proxy=None, open_timeout=5) as ws:
                await asyncio.wait_for(ws.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
        assert await stored(db, sid) == []


async def test_limits_of_zero_are_off(chat_settings: Settings, redis: Redis) -> None:
    async with serving(limited(chat_settings)) as (client, _):
        sessions = [await new_session(client) for _ in range(4)]
        for sid in sessions:
            assert (await start(client, sid, SLOW)).status_code == 200
        for _ in range(30):
            assert (await client.get("/api/chat/sessions", headers=ALICE)).status_code == 200
        assert await redis.keys("copilot:user:*") == []
