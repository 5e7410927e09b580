"""Turns end to end: HTTP → turn → mock model over HTTP → tools → Redis stream → SSE, real Postgres and Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from tests.conftest import LiveServer, auth
from tests.protocol_check import check_body
from tests.sse import chunks, read_stream, text_of, types

ALICE = auth("alice")


async def new_session(client: httpx.AsyncClient, headers: dict[str, str] = ALICE, title: str | None = "t") -> str:
    # Sessions get a title so the title writer (which also calls the mock) stays out of the way.
    r = await client.post("/api/chat/sessions", json={"title": title}, headers=headers)
    assert r.status_code == 201
    return str(r.json()["id"])


async def send(client: httpx.AsyncClient, sid: str, message: str, **extra: Any) -> tuple[httpx.Response, bytes]:
    response, body = await read_stream(
        client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message, **extra}, headers=ALICE
    )
    return response, body


async def stored(db: asyncpg.Connection, sid: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT sequence, role, content, tool_calls, tool_call_id, token_count FROM chat_messages "
        "WHERE session_id = $1 ORDER BY sequence",
        uuid.UUID(sid),
    )


def turn_calls(mock: MockLLMServer) -> list[dict[str, Any]]:
    """Streaming model calls (the title writer's call is not streamed)."""
    return [r for r in mock.requests if r.get("stream")]


def assert_well_formed(body: bytes) -> None:
    problems = check_body(body)
    assert problems == [], problems


async def wait_idle(client: httpx.AsyncClient, sid: str) -> None:
    """Until the session's turn has stored its reply (the turn runs on after its stream closes)."""
    for _ in range(200):
        detail = (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()
        if detail["messages"] and detail["messages"][-1]["role"] == "assistant":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the turn never stored its reply")


async def test_text_reply_streams_and_is_stored(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    response, body = await send(client, sid, '[[mock:text content="Hello there, friend"]]')
    assert response.status_code == 200
    assert response.headers["x-vercel-ai-ui-message-stream"] == "v1"
    assert response.headers["content-type"].startswith("text/event-stream")
    task_id = response.headers["x-copilot-task-id"]
    assert_well_formed(body)
    seq = types(body)
    assert seq[:3] == ["start", "start-step", "text-start"]
    assert seq[-3:] == ["text-end", "finish-step", "finish"]
    first = chunks(body)[0]
    assert first["messageMetadata"] == {"taskId": task_id}
    assert chunks(body)[-1]["finishReason"] == "stop"
    assert body.endswith(b"data: [DONE]\n\n")
    assert all(line.startswith(b"id: ") for line in body.split(b"\n\n")[0].split(b"\n")[:1])
    assert text_of(body) == "Hello there, friend"

    rows = await stored(db, sid)
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", '[[mock:text content="Hello there, friend"]]'),
        ("assistant", "Hello there, friend"),
    ]
    assert all(r["token_count"] > 0 for r in rows)
    usage = (await client.get(f"/api/chat/sessions/{sid}/usage", headers=ALICE)).json()
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_a_read_of_the_session_on_finish_finds_the_reply(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    """`finish` comes with the round trip that puts the reply in the session's cache: a client that reloads the
    session the moment it sees `finish` (before `[DONE]`) finds the reply, and the turn no longer running."""
    client, _ = chat
    sid = await new_session(client)
    for n in range(5):
        message = f'[[mock:text content="Reply number {n}"]]'
        async with client.stream(
            "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}, headers=ALICE
        ) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: {") and '"type":"finish"' in line:
                    detail = (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()
                    break
            else:
                raise AssertionError("no finish")
        assert [(m["role"], m["content"]) for m in detail["messages"]][-1] == ("assistant", f"Reply number {n}")
        assert detail["active_task"] is None


async def test_tool_call_then_answer(chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, '[[mock:tool name=calculate args={"expression": "6*7"}]]')
    assert_well_formed(body)
    seq = [t for t in types(body) if t != "tool-input-delta"]
    assert seq[:5] == ["start", "start-step", "tool-input-start", "tool-input-available", "tool-output-available"]
    assert seq.count("start-step") == 2 and seq.count("finish-step") == 2
    streamed = "".join(c["inputTextDelta"] for c in chunks(body) if c["type"] == "tool-input-delta")
    assert streamed == '{"expression":"6*7"}'  # the arguments stream to the client as the model sends them
    call = next(c for c in chunks(body) if c["type"] == "tool-input-available")
    assert call["toolName"] == "calculate" and call["input"] == {"expression": "6*7"}
    output = next(c for c in chunks(body) if c["type"] == "tool-output-available")
    assert output["toolCallId"] == call["toolCallId"]
    assert "42" in str(output["output"])
    assert "42" in text_of(body)  # the model saw the result

    rows = await stored(db, sid)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[1]["tool_calls"][0]["id"] == call["toolCallId"]
    assert rows[2]["tool_call_id"] == call["toolCallId"] and "42" in rows[2]["content"]


async def test_parallel_tool_calls_run_concurrently(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(
        client,
        sid,
        '[[mock:tool name=calculate args={"expression": "1+1"}]] [[mock:tool name=get_current_time args={}]]',
    )
    assert_well_formed(body)
    outputs = [c for c in chunks(body) if c["type"] == "tool-output-available"]
    assert len(outputs) == 2
    rows = await stored(db, sid)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "tool", "assistant"]
    call_ids = [c["id"] for c in rows[1]["tool_calls"]]
    assert [rows[2]["tool_call_id"], rows[3]["tool_call_id"]] == call_ids


async def test_tool_error_becomes_a_structured_output(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, '[[mock:tool name=calculate args={"expression": "1/0"}]]')
    assert_well_formed(body)
    errors = [c for c in chunks(body) if c["type"] == "tool-output-error"]
    assert len(errors) == 1 and errors[0]["errorText"]
    assert chunks(body)[-1]["finishReason"] == "stop"  # the model answered after seeing the error
    rows = await stored(db, sid)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
    assert "error" in rows[2]["content"]


async def test_rate_limit_is_retried_before_the_first_chunk(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, "[[mock:rate_limit times=2 key=rl retry_after=0]] hi")
    assert_well_formed(body)
    assert "error" not in types(body)
    assert len(turn_calls(mock_llm)) == 3
    assert [r["role"] for r in await stored(db, sid)] == ["user", "assistant"]


@pytest.mark.parametrize(
    ("marker", "expected"),
    [
        ("[[mock:server_error]]", "failed"),
        ("[[mock:region_block]]", "not available in your country or region"),
        ("[[mock:context_length]]", "too long"),
    ],
)
async def test_model_errors_end_the_message_properly(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, marker: str, expected: str
) -> None:
    client, _ = chat
    sid = await new_session(client)
    response, body = await send(client, sid, marker)
    assert response.status_code == 200
    assert_well_formed(body)
    errors = [c for c in chunks(body) if c["type"] == "error"]
    assert len(errors) == 1 and expected in errors[0]["errorText"]
    assert chunks(body)[-1] == {"type": "finish", "finishReason": "error"}
    assert [r["role"] for r in await stored(db, sid)] == ["user"]


async def test_server_errors_are_retried_then_given_up(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    await send(client, sid, "[[mock:server_error]]")
    assert len(turn_calls(mock_llm)) == 4  # the first call and three retries


async def test_stream_cut_midway_keeps_the_partial_reply(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, "[[mock:text tokens=10]] [[mock:cut after=4]]")
    assert_well_formed(body)
    assert len(turn_calls(mock_llm)) == 1  # text had been streamed: no retry, no duplicate
    partial = text_of(body)
    assert partial
    assert "error" in types(body)
    rows = await stored(db, sid)
    assert [(r["role"], r["content"]) for r in rows][1] == ("assistant", partial)


async def test_idle_model_stream_times_out(chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, "[[mock:text tokens=10]] [[mock:stall after=3 seconds=30]]")
    assert_well_formed(body)
    error = next(c for c in chunks(body) if c["type"] == "error")
    assert "sent nothing for 1s" in error["errorText"]
    rows = await stored(db, sid)
    assert rows[-1]["role"] == "assistant" and rows[-1]["content"] == text_of(body)


async def test_invalid_tool_json_retries_the_step(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, '[[mock:bad_tool_args name=calculate args={"expression": "2+2"} times=1 key=bj]]')
    assert_well_formed(body)
    assert types(body).count("start-step") == 3  # bad attempt, good attempt, answer
    assert "error" not in types(body)
    rows = await stored(db, sid)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]


async def test_invalid_tool_json_gives_up_with_a_clear_error(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, '[[mock:bad_tool_args name=calculate args={"expression": "2+2"}]]')
    assert_well_formed(body)
    error = next(c for c in chunks(body) if c["type"] == "error")
    assert "invalid tool arguments" in error["errorText"]
    assert [r["role"] for r in await stored(db, sid)] == ["user"]


async def test_resend_with_same_client_message_id_joins_the_same_turn(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    first, body1 = await send(client, sid, "hello", client_message_id="m-1")
    second, body2 = await send(client, sid, "hello", client_message_id="m-1")
    assert first.headers["x-copilot-task-id"] == second.headers["x-copilot-task-id"]
    assert body1 == body2  # the second request replays the same turn
    assert len(turn_calls(mock_llm)) == 1
    assert [r["role"] for r in await stored(db, sid)] == ["user", "assistant"]


async def test_concurrent_resends_start_one_turn(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    results = await asyncio.gather(
        *(send(client, sid, "hi [[mock:text tokens=5 delay_ms=20]]", client_message_id="same") for _ in range(5))
    )
    assert {r.status_code for r, _ in results} == {200}
    assert len({r.headers["x-copilot-task-id"] for r, _ in results}) == 1
    assert len({text_of(b) for _, b in results}) == 1
    assert len(turn_calls(mock_llm)) == 1
    assert [r["role"] for r in await stored(db, sid)] == ["user", "assistant"]


async def test_a_second_message_during_a_turn_is_rejected(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    slow = asyncio.create_task(send(client, sid, "[[mock:text tokens=20 delay_ms=25]]"))
    await asyncio.sleep(0.2)
    r = await client.post(f"/api/chat/sessions/{sid}/stream", json={"message": "again"}, headers=ALICE)
    assert r.status_code == 409
    assert r.json()["error"]["details"]["active_task_id"]
    await slow
    assert [r["role"] for r in await stored(db, sid)] == ["user", "assistant"]


async def test_two_sessions_stream_concurrently(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    a, b = await new_session(client), await new_session(client)
    (_, body_a), (_, body_b) = await asyncio.gather(
        send(client, a, '[[mock:text content="alpha one two" delay_ms=10]]'),
        send(client, b, '[[mock:text content="beta three four" delay_ms=10]]'),
    )
    assert text_of(body_a) == "alpha one two" and text_of(body_b) == "beta three four"


async def test_client_disconnect_does_not_stop_the_turn(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    url = f"/api/chat/sessions/{sid}/stream"
    async with client.stream("POST", url, json={"message": "[[mock:text tokens=30 delay_ms=10]]"}, headers=ALICE) as r:
        async for _ in r.aiter_bytes():
            break  # the browser goes away after the first bytes
    await wait_idle(client, sid)
    rows = await stored(db, sid)
    assert rows[-1]["role"] == "assistant"
    assert len(rows[-1]["content"].split()) == 30


async def test_use_chat_default_body(chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection) -> None:
    client, _ = chat
    sid = await new_session(client)
    body = {
        "id": sid,
        "trigger": "submit-message",
        "messages": [
            {"id": "u-1", "role": "user", "parts": [{"type": "text", "text": "earlier"}]},
            {"id": "a-1", "role": "assistant", "parts": [{"type": "text", "text": "ignored: history is stored"}]},
            {"id": "u-2", "role": "user", "parts": [{"type": "text", "text": '[[mock:text content="ok"]]'}]},
        ],
    }
    _, raw = await read_stream(client, "POST", f"/api/chat/sessions/{sid}/stream", json=body, headers=ALICE)
    assert text_of(raw) == "ok"
    rows = await db.fetch(
        "SELECT role, content, client_message_id FROM chat_messages WHERE session_id = $1 ORDER BY sequence",
        uuid.UUID(sid),
    )
    assert [(r["role"], r["client_message_id"]) for r in rows] == [("user", "u-2"), ("assistant", None)]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"message": ""},
        {"message": "   "},
        {"message": 5},
        {"messages": [{"id": "a", "role": "assistant", "parts": [{"type": "text", "text": "x"}]}]},
        {"messages": [{"id": "u", "role": "user", "parts": []}]},
        {
            "messages": [{"id": "u", "role": "user", "parts": [{"type": "text", "text": "x"}]}],
            "trigger": "regenerate-message",
        },
        {"message": "x", "context": {"url": "u", "unknown": 1}},
    ],
)
async def test_bad_message_bodies_are_refused_and_store_nothing(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection, body: dict[str, Any]
) -> None:
    client, _ = chat
    sid = await new_session(client)
    r = await client.post(f"/api/chat/sessions/{sid}/stream", json=body, headers=ALICE)
    assert r.status_code in (400, 422), r.text
    assert r.json()["error"]["message"]
    assert await stored(db, sid) == []


async def test_message_too_long_is_refused(chat_settings: Settings, db: asyncpg.Connection) -> None:
    limited = chat_settings.model_copy(update={"max_message_chars": 10})
    async with LiveServer(limited) as live, httpx.AsyncClient(base_url=live.url) as client:
        sid = await new_session(client)
        r = await client.post(f"/api/chat/sessions/{sid}/stream", json={"message": "x" * 11}, headers=ALICE)
        assert r.status_code == 400 and "longer than 10" in r.json()["error"]["message"]
    assert await stored(db, sid) == []


async def test_another_users_session_cannot_be_streamed(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    for path in ("stream", "messages"):
        r = await client.post(f"/api/chat/sessions/{sid}/{path}", json={"message": "hi"}, headers=auth("mallory"))
        assert r.status_code == 404
    assert (await client.get(f"/api/chat/sessions/{sid}/usage", headers=auth("mallory"))).status_code == 404
    assert await stored(db, sid) == []


async def test_synchronous_messages_endpoint(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    sid = await new_session(client)
    r = await client.post(
        f"/api/chat/sessions/{sid}/messages",
        json={"message": '[[mock:tool name=calculate args={"expression": "3*3"}]]'},
        headers=ALICE,
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["status"] == "completed"
    assert [m["role"] for m in result["messages"]] == ["assistant", "tool", "assistant"]
    assert "9" in result["messages"][1]["content"]


async def test_tool_round_cap_ends_a_runaway_loop(chat_settings: Settings, db: asyncpg.Connection) -> None:
    capped = chat_settings.model_copy(update={"max_tool_rounds": 1})
    async with LiveServer(capped) as live, httpx.AsyncClient(base_url=live.url) as client:
        sid = await new_session(client)
        _, body = await send(client, sid, '[[mock:tool name=calculate args={"expression": "1+1"}]]')
    assert_well_formed(body)
    error = next(c for c in chunks(body) if c["type"] == "error")
    assert "Stopped after 1 tool rounds" in error["errorText"]
    assert [r["role"] for r in await stored(db, sid)] == ["user", "assistant", "tool"]


async def test_a_retried_step_does_not_spend_a_tool_round(chat_settings: Settings, db: asyncpg.Connection) -> None:
    """Regression: the retry of a step whose tool arguments were invalid counted as one of `max_tool_rounds`, so a
    turn allowed two rounds ended with an error after its only tool round, before the model could answer."""
    capped = chat_settings.model_copy(update={"max_tool_rounds": 2})
    message = '[[mock:bad_tool_args name=calculate args={"expression": "1+1"} times=1 key=retried]]'
    async with LiveServer(capped) as live, httpx.AsyncClient(base_url=live.url) as client:
        sid = await new_session(client)
        _, body = await send(client, sid, message)
    assert_well_formed(body)
    assert [c for c in chunks(body) if c["type"] == "error"] == []
    assert [r["role"] for r in await stored(db, sid)] == ["user", "assistant", "tool", "assistant"]


async def test_turn_duration_limit(chat_settings: Settings, db: asyncpg.Connection) -> None:
    limited = chat_settings.model_copy(update={"turn_max_seconds": 0.5})
    async with LiveServer(limited) as live, httpx.AsyncClient(base_url=live.url) as client:
        sid = await new_session(client)
        _, body = await send(client, sid, "[[mock:text tokens=100 delay_ms=20]]")
    assert_well_formed(body)
    error = next(c for c in chunks(body) if c["type"] == "error")
    assert "longer than 0.5s" in error["errorText"]
    rows = await stored(db, sid)
    assert rows[-1]["role"] == "assistant" and rows[-1]["content"].endswith("[interrupted]")
    assert rows[-1]["content"].removesuffix("\n\n[interrupted]") == text_of(body)


async def test_shutdown_mid_turn_stores_the_partial_reply_marked_interrupted(
    chat_settings: Settings, db: asyncpg.Connection
) -> None:
    async with LiveServer(chat_settings) as live, httpx.AsyncClient(base_url=live.url) as client:
        sid = await new_session(client)
        task = asyncio.create_task(send(client, sid, "[[mock:text tokens=200 delay_ms=10]]"))
        await asyncio.sleep(0.4)
        await live.app.state.runtime.driver.shutdown()
        _, body = await task
    assert_well_formed(body)
    rows = await stored(db, sid)
    assert rows[-1]["content"].endswith("[interrupted]")
    assert rows[-1]["content"].removesuffix("\n\n[interrupted]") == text_of(body)


async def test_first_message_gets_a_title(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    sid = await new_session(client, title=None)
    await send(client, sid, "Plan a trip to Rome")
    for _ in range(100):
        title = (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()["title"]
        if title and title != "t":
            break
        await asyncio.sleep(0.05)
    assert title


async def test_heartbeats_while_the_model_is_silent(chat_settings: Settings) -> None:
    quick = chat_settings.model_copy(update={"heartbeat_seconds": 0.2, "llm_idle_timeout_seconds": 5.0})
    async with LiveServer(quick) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await send(client, sid, "[[mock:text tokens=6]] [[mock:stall after=2 seconds=1]]")
    assert body.count(b": keep-alive\n\n") >= 3
    assert_well_formed(body)
    assert len(text_of(body).split()) == 6


async def test_a_resend_of_a_message_whose_turn_failed_tries_again_and_stores_it_once(
    chat_settings: Settings, db: asyncpg.Connection, mock_llm: MockLLMServer
) -> None:
    """Regression (the panel's Retry stored the message twice): a resend with the client message id of a message
    whose turn failed before any reply was stored is a new attempt of that turn, not a replay of the failure."""
    settings = chat_settings.model_copy(update={"llm_max_retries": 0})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        message = "Hello [[mock:server_error times=1 key=retry-me]]"
        first, body = await send(client, sid, message, client_message_id="m-1")
        assert chunks(body)[-1] == {"type": "finish", "finishReason": "error"}
        await asyncio.sleep(0.2)  # the failed turn frees its session
        again, body = await send(client, sid, message, client_message_id="m-1")
        assert again.status_code == 200
        assert again.headers["x-copilot-task-id"] == first.headers["x-copilot-task-id"]
        assert_well_formed(body)
        assert chunks(body)[-1]["finishReason"] == "stop"
        await wait_idle(client, sid)
        assert [r["role"] for r in await stored(db, sid)] == ["user", "assistant"]
        # A turn that had stored part of a reply before it failed is answered: its resend is refused.
        cut = "[[mock:text tokens=10]] [[mock:cut after=4]]"
        await send(client, sid, cut, client_message_id="m-2")
        await asyncio.sleep(0.2)
        refused = await client.post(
            f"/api/chat/sessions/{sid}/stream", json={"message": cut, "client_message_id": "m-2"}, headers=ALICE
        )
        assert refused.status_code == 409 and "message_id" in refused.json()["error"]["details"]
