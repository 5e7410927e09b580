"""The pod's cap on running turns end to end (`max_concurrent_turns`): past it a new turn gets 503 `overloaded` with
`Retry-After` before anything is stored or claimed, over HTTP, the WebSocket and AG-UI; a resend of a running turn,
reads, replays and cancels go on; a retry once a turn has ended is a whole new turn. Real server, Postgres, Redis,
the mock model."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import orjson
from redis.asyncio import Redis
from websockets.asyncio.client import connect

from backend.config import Settings
from tests.api.test_agui import run_input, user
from tests.api.test_human_in_the_loop import (
    CALL_HIGHLIGHT,
    HIGHLIGHT,
    follow,
    input_available,
    post_stream,
    use_chat_body,
)
from tests.api.test_rate_limits import ALICE, live_slots, new_session, serving, start, stored
from tests.conftest import make_token
from tests.sse import chunks, read_stream, text_of

SLOW = "[[mock:text tokens=300 delay_ms=20]]"
"""A reply of about 6 s: it holds its place while the test works (the server stops it at shutdown)."""
SHORT = "[[mock:text tokens=60 delay_ms=20]]"
"""A reply of about 1.2 s: it ends while the test waits for it."""


def capped(settings: Settings, turns: int) -> Settings:
    """`settings` with a cap of `turns` running turns and the per-user concurrent-turn limit above it."""
    return settings.model_copy(update={"max_concurrent_turns": turns, "rate_limit_concurrent_turns": turns + 5})


def overloaded(response: httpx.Response) -> dict[str, Any]:
    """The error of a 503 `overloaded`, after checking its `Retry-After` header."""
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == "overloaded" and error["details"] == {"retry_after": 1}, error
    return error


async def refusals(client: httpx.AsyncClient) -> float:
    metrics = (await client.get("/metrics")).text
    [line] = [line for line in metrics.splitlines() if line.startswith("copilot_turns_overloaded_total ")]
    return float(line.split()[1])


async def test_past_the_cap_a_new_turn_gets_503_overloaded_and_loses_nothing(
    chat_settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    async with serving(capped(chat_settings, 2)) as (client, _):
        s1, s2, s3 = [await new_session(client) for _ in range(3)]
        first = await start(client, s1, SHORT, client_message_id="m1")
        assert first.status_code == 200 and (await start(client, s2, SLOW)).status_code == 200

        r = await start(client, s3, '[[mock:text content="a whole reply"]]', client_message_id="m3")
        assert "as many replies as it can (2)" in overloaded(r)["message"]
        assert await stored(db, s3) == []  # no user message
        assert await live_slots(redis, "alice") == 2  # no per-user slot
        session = (await client.get(f"/api/chat/sessions/{s3}", headers=ALICE)).json()
        assert session["message_count"] == 0 and session["active_task"] is None  # no claim in Redis
        sql = "SELECT active_turn_id FROM chat_sessions WHERE id = $1"
        assert await db.fetchval(sql, uuid.UUID(s3)) is None  # nor in Postgres
        assert await refusals(client) == 1

        # At capacity: a resend of a running turn's message follows it; reads, replays and health answer.
        again = await start(client, s1, SHORT, client_message_id="m1")
        assert again.status_code == 200
        assert again.headers["x-copilot-task-id"] == first.headers["x-copilot-task-id"]
        assert (await client.get("/api/chat/sessions", headers=ALICE)).status_code == 200
        assert (await client.get(f"/api/chat/sessions/{s1}/ui-messages", headers=ALICE)).status_code == 200
        assert (await client.get("/health/ready")).status_code == 200  # readiness stays: the 503 is per request
        task = first.headers["x-copilot-task-id"]
        response, replay = await read_stream(client, "GET", f"/api/chat/tasks/{task}/stream", headers=ALICE)
        assert response.status_code == 200 and chunks(replay)[-1]["finishReason"] == "stop"  # s1 ran to its end

        # One ended: the same request again is a new turn, answered whole.
        response, body = await read_stream(
            client,
            "POST",
            f"/api/chat/sessions/{s3}/stream",
            json={"message": '[[mock:text content="a whole reply"]]', "client_message_id": "m3"},
            headers=ALICE,
        )
        assert response.status_code == 200 and text_of(body) == "a whole reply"
        assert await stored(db, s3) == ["user", "assistant"]
        assert await refusals(client) == 1


async def test_a_cancel_at_capacity_works_and_frees_a_place(chat_settings: Settings) -> None:
    async with serving(capped(chat_settings, 1)) as (client, _):
        s1, s2 = [await new_session(client) for _ in range(2)]
        assert (await start(client, s1, SLOW)).status_code == 200
        overloaded(await start(client, s2, "hello"))
        cancel = await client.post(f"/api/chat/sessions/{s1}/cancel", headers=ALICE)
        assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
        assert (await start(client, s2, "hello")).status_code == 200


async def test_over_the_websocket_a_new_turn_past_the_cap_gets_an_overloaded_error_frame(
    chat_settings: Settings, db: asyncpg.Connection
) -> None:
    async with serving(capped(chat_settings, 1)) as (client, live):
        busy, sid = await new_session(client), await new_session(client)
        assert (await start(client, busy, SLOW)).status_code == 200
        url = f"ws://127.0.0.1:{live.port}/api/chat/sessions/{sid}/ws?token={make_token('alice')}"
        async with connect(url, proxy=None, open_timeout=5) as ws:
            await ws.send(orjson.dumps({"type": "message", "message": "hello"}).decode())
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            assert frame["type"] == "error" and frame["code"] == "overloaded", frame
            assert frame["retry_after"] == 1
            await ws.send(orjson.dumps({"type": "ping"}).decode())  # the socket stays open
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 10)) == {"type": "pong"}
        assert await stored(db, sid) == []


async def test_an_ag_ui_run_past_the_cap_is_refused_before_its_thread_or_run_exist(
    chat_settings: Settings, db: asyncpg.Connection
) -> None:
    async with serving(capped(chat_settings, 1)) as (client, _):
        assert (await start(client, await new_session(client), SLOW)).status_code == 200
        thread = str(uuid.uuid4())
        body = run_input(thread, user('[[mock:text content="ran"]]', "u1"))
        response, _ = await read_stream(client, "POST", "/api/agui", json=body, headers=ALICE)
        overloaded(response)
        assert await db.fetchval("SELECT count(*) FROM chat_sessions WHERE id = $1", uuid.UUID(thread)) == 0
        replay = await client.get(f"/api/agui/runs/{body['runId']}/events", headers=ALICE)
        assert replay.status_code == 404  # the run id was not bound: the same run may be sent again


async def test_requests_that_arrive_together_cannot_all_pass_the_cap(
    chat_settings: Settings, db: asyncpg.Connection
) -> None:
    async with serving(capped(chat_settings, 2)) as (client, _):
        sessions = [await new_session(client) for _ in range(6)]
        responses = await asyncio.gather(*(start(client, sid, SLOW) for sid in sessions))
        assert sorted(r.status_code for r in responses) == [200, 200, 503, 503, 503, 503]
        for sid, response in zip(sessions, responses, strict=True):
            assert await stored(db, sid) == (["user"] if response.status_code == 200 else [])


async def test_a_continuation_past_the_cap_is_refused_and_the_same_answer_starts_it_later(
    chat_settings: Settings,
) -> None:
    async with serving(capped(chat_settings, 1)) as (client, _):
        sid, busy = await new_session(client), await new_session(client)
        _, body = await post_stream(client, sid, use_chat_body(sid, CALL_HIGHLIGHT, tools=[HIGHLIGHT]))
        call_id = input_available(body, "highlight_element")["toolCallId"]
        assert (await start(client, busy, SLOW)).status_code == 200
        answer = f"/api/chat/sessions/{sid}/tool-calls/{call_id}/output"
        overloaded(await client.post(answer, json={"output": {"done": True}}, headers=ALICE))

        await client.post(f"/api/chat/sessions/{busy}/cancel", headers=ALICE)
        r = await client.post(answer, json={"output": {"done": True}}, headers=ALICE)  # the same answer again
        assert r.status_code == 200, r.text
        continued = await follow(client, r.json()["task_id"])
        assert chunks(continued)[-1]["finishReason"] == "stop"


async def test_use_chat_and_the_waiting_messages_endpoint_are_refused_too_and_an_ag_ui_resend_is_not(
    chat_settings: Settings, db: asyncpg.Connection
) -> None:
    async with serving(capped(chat_settings, 1)) as (client, _):
        thread = str(uuid.uuid4())
        body = run_input(thread, user(SLOW, "u1"))
        async with client.stream("POST", "/api/agui", json=body, headers=ALICE) as running:
            assert running.status_code == 200  # the only place is this run's
        sid = await new_session(client)
        use_chat = use_chat_body(sid, "hello")
        r = await client.post(f"/api/chat/sessions/{sid}/stream", json=use_chat, headers=ALICE)
        overloaded(r)
        overloaded(await client.post(f"/api/chat/sessions/{sid}/messages", json={"message": "hi"}, headers=ALICE))
        assert await stored(db, sid) == []

        again = {**body, "runId": str(uuid.uuid4())}  # the same message in a new run: it follows the running turn
        async with client.stream("POST", "/api/agui", json=again, headers=ALICE) as resent:
            assert resent.status_code == 200
            assert resent.headers["x-copilot-task-id"] == running.headers["x-copilot-task-id"]
