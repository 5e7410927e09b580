"""`POST /api/agui` and the run routes end to end: real server, mock model, Postgres and Redis; AG-UI events parsed."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import orjson

from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from tests.conftest import LiveServer, auth
from tests.sse import parse, read_stream

ALICE = auth("alice")
BOB = auth("bob")


def run_input(thread_id: str, *messages: dict[str, Any], run_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "threadId": thread_id,
        "runId": run_id or str(uuid.uuid4()),
        "messages": list(messages),
        "tools": [],
        "context": [],
        "state": {},
        "forwardedProps": {},
        **extra,
    }


def user(text: str, message_id: str | None = None) -> dict[str, Any]:
    return {"id": message_id or str(uuid.uuid4()), "role": "user", "content": text}


def events(body: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(f.data) for f in parse(body)]


def kinds(body: bytes) -> list[str]:
    return [e["type"] for e in events(body)]


async def run(
    client: httpx.AsyncClient, body: dict[str, Any], headers: dict[str, str] = ALICE
) -> tuple[httpx.Response, bytes]:
    return await read_stream(client, "POST", "/api/agui", json=body, headers=headers)


def text_of(body: bytes) -> str:
    return "".join(e["delta"] for e in events(body) if e["type"] == "TEXT_MESSAGE_CONTENT")


async def test_text_run_streams_ag_ui_events(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    thread = str(uuid.uuid4())
    response, body = await run(client, run_input(thread, user('[[mock:text content="Hello there"]]'), run_id="r1"))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    assert kinds(body) == [
        "RUN_STARTED",
        "STEP_STARTED",
        "TEXT_MESSAGE_START",
        *["TEXT_MESSAGE_CONTENT"] * (kinds(body).count("TEXT_MESSAGE_CONTENT")),
        "TEXT_MESSAGE_END",
        "STEP_FINISHED",
        "RUN_FINISHED",
    ]
    first, last = events(body)[0], events(body)[-1]
    assert (first["threadId"], first["runId"]) == (thread, "r1")
    assert last["outcome"] == {"type": "success"} and last["usage"][0]["outputTokens"] > 0
    assert text_of(body) == "Hello there"
    # The thread is a session of the caller, reachable by the other routes.
    r = await client.get(f"/api/chat/sessions/{thread}", headers=ALICE)
    assert [m["role"] for m in r.json()["messages"]] == ["user", "assistant"]
    assert (await client.get(f"/api/chat/sessions/{thread}", headers=BOB)).status_code == 404


async def test_tool_calls_and_results(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    message = user('[[mock:tool name=calculate args={"expression": "6*7"}]]')
    _, body = await run(client, run_input("plain-thread", message))
    evs = events(body)
    start = next(e for e in evs if e["type"] == "TOOL_CALL_START")
    assert start["toolCallName"] == "calculate" and start["parentMessageId"].startswith("msg-")
    args = "".join(e["delta"] for e in evs if e["type"] == "TOOL_CALL_ARGS" and e["toolCallId"] == start["toolCallId"])
    assert orjson.loads(args) == {"expression": "6*7"}
    result = next(e for e in evs if e["type"] == "TOOL_CALL_RESULT")
    assert result["toolCallId"] == start["toolCallId"] and "42" in result["content"]
    assert kinds(body).index("TOOL_CALL_END") < kinds(body).index("TOOL_CALL_RESULT")
    assert kinds(body).count("STEP_STARTED") == 2 and "42" in text_of(body)


async def test_model_error_is_run_error(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    _, body = await run(client, run_input(str(uuid.uuid4()), user("[[mock:region_block]]")))
    assert kinds(body)[0] == "RUN_STARTED" and kinds(body)[-1] == "RUN_ERROR"
    assert "region" in events(body)[-1]["message"]
    assert "RUN_FINISHED" not in kinds(body)


async def test_history_that_contradicts_storage_gets_a_snapshot(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    thread = str(uuid.uuid4())
    first = user('[[mock:text content="One"]]', "u1")
    _, body = await run(client, run_input(thread, first))
    assert "MESSAGES_SNAPSHOT" not in kinds(body)
    streamed = next(e for e in events(body) if e["type"] == "TEXT_MESSAGE_START")["messageId"]
    # The client's history agrees with storage (ids and whitespace aside): no snapshot.
    agreed = {"id": "whatever", "role": "assistant", "content": " One "}
    _, body = await run(client, run_input(thread, first, agreed, user('[[mock:text content="Two"]]', "u2")))
    assert "MESSAGES_SNAPSHOT" not in kinds(body) and text_of(body) == "Two"
    # A client that lost the history (or made one up) gets the stored one, with its new message, then the run.
    made_up = user("I said something else")
    _, body = await run(client, run_input(thread, made_up, user('[[mock:text content="3"]]', "u3")))
    assert kinds(body)[:3] == ["RUN_STARTED", "MESSAGES_SNAPSHOT", "MESSAGES_SNAPSHOT"]
    assert events(body)[1]["messages"] == events(body)[2]["messages"][:-1]  # first without the new message
    snapshot = events(body)[2]["messages"]
    assert [(m["role"], m.get("content")) for m in snapshot] == [
        ("user", first["content"]),
        ("assistant", "One"),
        ("user", '[[mock:text content="Two"]]'),
        ("assistant", "Two"),
        ("user", '[[mock:text content="3"]]'),
    ]
    assert snapshot[0]["id"] == "u1" and snapshot[1]["id"] == streamed
    assert text_of(body) == "3"


async def test_resent_run_joins_its_turn(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    thread = str(uuid.uuid4())
    message = user('[[mock:text content="Once"]]', "same")
    _, first = await run(client, run_input(thread, message))
    _, again = await run(client, run_input(thread, message))
    assert text_of(again) == text_of(first) == "Once"
    r = await client.get(f"/api/chat/sessions/{thread}", headers=ALICE)
    assert [m["role"] for m in r.json()["messages"]] == ["user", "assistant"]


async def test_replay_with_cursor_and_snapshot(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    thread = str(uuid.uuid4())
    _, body = await run(client, run_input(thread, user('[[mock:text content="alpha beta gamma delta"]]'), run_id="rr"))
    _, replay = await read_stream(client, "GET", "/api/agui/runs/rr/events", headers=ALICE)
    assert kinds(replay) == kinds(body) and text_of(replay) == text_of(body)
    frames = parse(replay)
    # Resume after the first text delta: the open message is re-opened, the rest follows, nothing twice.
    content = [i for i, f in enumerate(frames) if orjson.loads(f.data)["type"] == "TEXT_MESSAGE_CONTENT"]
    cursor = frames[content[0]].id
    assert cursor
    _, rest = await read_stream(client, "GET", "/api/agui/runs/rr/events", headers={**ALICE, "Last-Event-ID": cursor})
    delivered = orjson.loads(frames[content[0]].data)["delta"]
    assert kinds(rest)[:3] == ["RUN_STARTED", "STEP_STARTED", "TEXT_MESSAGE_START"]
    assert delivered + text_of(rest) == "alpha beta gamma delta"
    _, snap = await read_stream(client, "GET", "/api/agui/runs/rr/events?snapshot=true", headers=ALICE)
    assert kinds(snap)[:2] == ["RUN_STARTED", "MESSAGES_SNAPSHOT"]
    assert [m["role"] for m in events(snap)[1]["messages"]] == ["user"]  # the run itself follows
    assert (await client.get("/api/agui/runs/rr/events", headers=BOB)).status_code == 404
    assert (await client.get("/api/agui/runs/nope/events", headers=ALICE)).status_code == 404


async def test_cancel_a_run(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    thread = str(uuid.uuid4())
    body = run_input(thread, user("[[mock:text tokens=200 delay_ms=20]]"), run_id="slow", protocolVersion="1.0.0")
    task = asyncio.create_task(run(client, body))
    for _ in range(100):
        await asyncio.sleep(0.05)
        r = await client.get(f"/api/chat/sessions/{thread}", headers=ALICE)
        if r.status_code == 200 and r.json()["active_task"]:
            break
    r = await client.post("/api/agui/runs/slow/cancel", headers=ALICE)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    _, streamed = await task
    assert events(streamed)[-1]["type"] == "RUN_FINISHED"
    assert events(streamed)[-1]["outcome"] == {"type": "cancelled"}


async def test_refused_inputs(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    thread = str(uuid.uuid4())
    assert (await client.post("/api/agui", json=run_input(thread, user("hi")))).status_code == 401
    tool_result = {"id": "t", "role": "tool", "content": "x", "toolCallId": "c"}
    r = await client.post("/api/agui", json=run_input(thread, tool_result), headers=ALICE)
    assert r.status_code == 404  # an answer on a thread that does not exist
    assistant = {"id": "a", "role": "assistant", "content": "hello"}
    r = await client.post("/api/agui", json=run_input(thread, assistant), headers=ALICE)
    assert r.status_code == 400
    r = await client.post("/api/agui", json=run_input(thread, user("a\u0000b")), headers=ALICE)
    assert r.status_code == 422
    # Bob cannot run on Alice's thread, nor take over her run id.
    await run(client, run_input(thread, user('[[mock:text content="mine"]]'), run_id="alices"))
    r = await client.post("/api/agui", json=run_input(thread, user("hi")), headers=BOB)
    assert r.status_code == 404
    r = await client.post("/api/agui", json=run_input(str(uuid.uuid4()), user("hi"), run_id="alices"), headers=BOB)
    assert r.status_code == 409


async def test_another_pod_follows_and_cancels_a_running_run(chat_settings: Settings) -> None:
    """Pod B replays a run pod A is running (from the turn's Redis Stream, live to its end) and stops it."""
    async with (
        LiveServer(chat_settings) as a,
        LiveServer(chat_settings) as b,
        httpx.AsyncClient(base_url=a.url, timeout=30) as client_a,
        httpx.AsyncClient(base_url=b.url, timeout=30) as client_b,
    ):
        thread = str(uuid.uuid4())
        body = run_input(thread, user("[[mock:text tokens=400 delay_ms=10]]"), run_id="on-a", protocolVersion="1.0.0")
        on_a = asyncio.create_task(run(client_a, body))
        for _ in range(100):
            await asyncio.sleep(0.05)
            r = await client_b.get(f"/api/chat/sessions/{thread}", headers=ALICE)
            if r.status_code == 200 and r.json()["active_task"]:
                break
        on_b = asyncio.create_task(read_stream(client_b, "GET", "/api/agui/runs/on-a/events", headers=ALICE))
        await asyncio.sleep(0.3)
        assert not on_b.done()  # following live
        r = await client_b.post("/api/agui/runs/on-a/cancel", headers=ALICE)
        assert r.json()["status"] == "cancelled"
        (_, streamed_a), (_, streamed_b) = await on_a, await on_b
        for streamed in (streamed_a, streamed_b):
            assert events(streamed)[-1]["outcome"] == {"type": "cancelled"}
        assert text_of(streamed_b) == text_of(streamed_a) and 0 < len(text_of(streamed_a).split()) < 400


async def test_context_reaches_the_model_and_tools_are_accepted(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer
) -> None:
    """`context` is shown to the model for the run, as a page's content is; frontend `tools` are offered to it;
    `state` and `forwardedProps` are accepted (not used)."""
    client, _ = chat
    context = [{"description": "The open document", "value": "Quarterly report, draft 3"}]
    tools = [{"name": "confirm", "description": "Ask the user", "parameters": {"type": "object"}}]
    body = run_input(str(uuid.uuid4()), user('[[mock:text content="ok"]]'), context=context, tools=tools)
    body["forwardedProps"] = {"anything": [1, 2]}
    response, streamed = await run(client, body)
    assert response.status_code == 200 and text_of(streamed) == "ok"
    prompt = json.dumps([r for r in mock_llm.requests if r.get("stream")][-1]["messages"])
    assert "Quarterly report, draft 3" in prompt and "The open document" in prompt
    offered = [t["function"]["name"] for t in [r for r in mock_llm.requests if r.get("stream")][-1].get("tools", [])]
    assert "confirm" in offered
