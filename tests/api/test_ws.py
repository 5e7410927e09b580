"""The WebSocket transport end to end: a real server and WebSocket client, the mock model, Postgres and Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from backend.chat import protocol
from backend.config import Settings
from tests.conftest import LiveServer, auth, make_token
from tests.protocol_check import check_sequence

ALICE = auth("alice")
Chat = tuple[httpx.AsyncClient, LiveServer]


async def new_session(client: httpx.AsyncClient, headers: dict[str, str] = ALICE) -> str:
    r = await client.post("/api/chat/sessions", json={"title": "t"}, headers=headers)  # titled: no title call
    assert r.status_code == 201
    return str(r.json()["id"])


def ws_url(live: LiveServer, sid: str, token: str | None = None) -> str:
    url = f"ws://127.0.0.1:{live.port}/api/chat/sessions/{sid}/ws"
    return f"{url}?token={token}" if token else url


@asynccontextmanager
async def socket(
    live: LiveServer, sid: str, token: str | None = "alice", headers: dict[str, str] | None = None
) -> AsyncIterator[ClientConnection]:
    """A socket on the session; `token` is a user id whose token goes in `?token=` (None: no token)."""
    url = ws_url(live, sid, make_token(token) if token else None)
    async with connect(url, additional_headers=headers, proxy=None, open_timeout=5) as ws:
        yield ws


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(frame).decode())


async def recv(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    return frame


async def until_done(ws: ClientConnection) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The `chunk` frames up to the turn's `done` (heartbeats skipped), and the `done` frame."""
    frames = []
    while (frame := await recv(ws))["type"] != "done":
        assert frame["type"] in ("chunk", "heartbeat"), frame
        if frame["type"] == "chunk":
            frames.append(frame)
    return frames, frame


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["chunk"]["type"] for f in frames]


def text_of(frames: list[dict[str, Any]]) -> str:
    return "".join(f["chunk"]["delta"] for f in frames if f["chunk"]["type"] == "text-delta")


def assert_well_formed(frames: list[dict[str, Any]]) -> None:
    problems = check_sequence(protocol.decode(orjson.dumps(f["chunk"])) for f in frames)
    assert problems == [], problems


def cursor(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


async def stored_messages(client: httpx.AsyncClient, sid: str) -> list[dict[str, Any]]:
    """The session's messages once its last turn has stored its reply (the turn outlives its stream)."""
    for _ in range(200):
        messages: list[dict[str, Any]] = (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()[
            "messages"
        ]
        if messages and messages[-1]["role"] == "assistant":
            return messages
        await asyncio.sleep(0.05)
    raise AssertionError("the turn never stored its reply")


async def close_code(url: str, headers: dict[str, str] | None = None) -> int:
    async with connect(url, additional_headers=headers, proxy=None, open_timeout=5) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code


async def test_a_missing_or_invalid_token_is_refused_with_4401(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    assert await close_code(ws_url(live, sid)) == 4401
    assert await close_code(ws_url(live, sid, "not-a-jwt")) == 4401
    assert await close_code(ws_url(live, sid, make_token("alice", secret="another-secret-that-is-long-enough"))) == 4401
    assert await close_code(ws_url(live, sid, make_token("alice", ttl=-60))) == 4401
    assert await close_code(ws_url(live, sid), headers={"Authorization": "Basic abc"}) == 4401


async def test_the_authorization_header_also_works(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid, token=None, headers=ALICE) as ws:
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}


async def test_another_users_or_a_missing_session_is_refused_with_4404(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    mallory = make_token("mallory")
    assert await close_code(ws_url(live, sid, mallory)) == 4404
    assert await close_code(ws_url(live, str(uuid.uuid4()), mallory)) == 4404
    assert await close_code(ws_url(live, "not-a-uuid", mallory)) == 4404


async def test_development_auth_needs_no_token(chat_settings: Settings) -> None:
    dev = chat_settings.model_copy(update={"dev_auth": True})
    async with LiveServer(dev) as live, httpx.AsyncClient(base_url=live.url) as client:
        sid = await new_session(client, headers={})
        async with socket(live, sid, token=None) as ws:
            await send(ws, {"type": "ping"})
            assert await recv(ws) == {"type": "pong"}


async def test_ping_pong(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        for _ in range(3):
            await send(ws, {"type": "ping"})
            assert await recv(ws) == {"type": "pong"}
        await ws.send(b'{"type": "ping"}')  # binary frames are read too
        assert await recv(ws) == {"type": "pong"}


async def test_a_message_streams_its_chunks_then_done_and_the_reply_is_stored(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        await send(ws, {"type": "message", "message": '[[mock:text content="Hello there, friend"]]'})
        frames, done = await until_done(ws)
    assert_well_formed(frames)
    assert types(frames)[:3] == ["start", "start-step", "text-start"]
    assert types(frames)[-3:] == ["text-end", "finish-step", "finish"]
    assert frames[-1]["chunk"]["finishReason"] == "stop"
    assert done == {"type": "done", "task_id": frames[0]["chunk"]["messageMetadata"]["taskId"]}
    ids = [cursor(f["id"]) for f in frames]
    assert ids == sorted(set(ids))  # stream entry ids, in order, no repeats
    assert text_of(frames) == "Hello there, friend"
    messages = await stored_messages(client, sid)
    assert [(m["role"], m["content"]) for m in messages][-1] == ("assistant", "Hello there, friend")


async def test_use_chat_message_form_is_accepted(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    body = {"type": "message", "messages": [{"id": "u-1", "role": "user", "parts": [{"type": "text", "text": "hi"}]}]}
    async with socket(live, sid) as ws:
        await send(ws, body)
        frames, _ = await until_done(ws)
    assert types(frames)[-1] == "finish" and text_of(frames)


async def test_cancel_during_a_turn_aborts_it_and_stores_the_partial_reply(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        await send(ws, {"type": "message", "message": "[[mock:text tokens=200 delay_ms=20]]"})
        seen: list[dict[str, Any]] = []
        while types(seen).count("text-delta") < 3:
            seen.append(await recv(ws))
        await send(ws, {"type": "cancel"})
        rest, _ = await until_done(ws)
    frames = seen + rest
    assert_well_formed(frames)
    assert types(frames)[-2:] == ["abort", "finish"]
    assert frames[-1]["chunk"]["finishReason"] == "other"
    reply = (await stored_messages(client, sid))[-1]["content"]
    assert reply.endswith("[interrupted]")
    assert reply.removesuffix("\n\n[interrupted]") == text_of(frames)
    assert len(text_of(frames).split()) < 200


async def test_resume_after_reconnecting_sends_exactly_the_missing_chunks(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        await send(ws, {"type": "message", "message": "[[mock:text tokens=60 delay_ms=20]]"})
        first = [await recv(ws) for _ in range(5)]
    async with socket(live, sid) as ws:
        await send(ws, {"type": "resume", "after": first[-1]["id"]})
        rest, done = await until_done(ws)
    frames = first + rest
    assert_well_formed(frames)
    assert types(frames)[-1] == "finish"
    registry = live.app.state.runtime.turn_registry
    stored = [orjson.loads(c) for c in await registry.chunks(done["task_id"])]
    assert [f["chunk"] for f in frames] == stored  # nothing lost, nothing repeated
    assert len(text_of(frames).split()) == 60


async def test_resume_without_a_cursor_replays_the_running_turn_from_its_start(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as writer, socket(live, sid) as reader:
        await send(writer, {"type": "message", "message": "[[mock:text tokens=30 delay_ms=20]]"})
        first = await recv(writer)  # the turn has started
        await send(reader, {"type": "resume"})
        replayed, _ = await until_done(reader)
        rest, _ = await until_done(writer)
    assert types(replayed)[0] == "start"
    assert replayed == [first, *rest]


async def test_resume_and_cancel_when_idle_answer_idle(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        await send(ws, {"type": "resume"})
        assert await recv(ws) == {"type": "idle"}
        await send(ws, {"type": "cancel"})
        assert await recv(ws) == {"type": "idle"}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_request"),
        ('{"type": "unknown"}', "invalid_request"),
        ('{"type": "message"}', "invalid_request"),
        ('{"type": "message", "message": ""}', "invalid_request"),
        ('{"type": "message", "message": "x", "context": {"unknown": 1}}', "invalid_request"),
        ('{"type": "resume", "after": "yesterday"}', "invalid_request"),
        ('{"type": "message", "message": "   "}', "bad_request"),
        ('{"type": "message", "message": "x", "trigger": "regenerate-message"}', "invalid_request"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_usable(chat: Chat, raw: str, code: str) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        await ws.send(raw)
        error = await recv(ws)
        assert error["type"] == "error" and error["code"] == code and error["message"], error
        await send(ws, {"type": "message", "message": '[[mock:text content="still here"]]'})
        frames, _ = await until_done(ws)
    assert text_of(frames) == "still here"
    assert [m["content"] for m in await stored_messages(client, sid)] == [
        '[[mock:text content="still here"]]',
        "still here",
    ]


async def test_a_second_message_during_a_turn_is_a_conflict(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        await send(ws, {"type": "message", "message": "[[mock:text tokens=20 delay_ms=25]]"})
        start = await recv(ws)
        await send(ws, {"type": "message", "message": "again"})
        frames = [start]
        while (frame := await recv(ws))["type"] != "error":
            frames.append(frame)
        assert frame["code"] == "conflict"
        assert frame["details"]["active_task_id"] == start["chunk"]["messageMetadata"]["taskId"]
        rest, _ = await until_done(ws)  # the running turn keeps streaming on the same socket
    frames += rest
    assert_well_formed(frames)
    assert len(text_of(frames).split()) == 20
    assert [m["role"] for m in await stored_messages(client, sid)] == ["user", "assistant"]


async def test_closing_the_socket_does_not_stop_the_turn(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        await send(ws, {"type": "message", "message": "[[mock:text tokens=30 delay_ms=10]]"})
        await recv(ws)
    reply = (await stored_messages(client, sid))[-1]["content"]
    assert len(reply.split()) == 30


async def test_heartbeats_while_the_model_is_silent(chat_settings: Settings) -> None:
    quick = chat_settings.model_copy(update={"heartbeat_seconds": 0.2, "llm_idle_timeout_seconds": 5.0})
    async with LiveServer(quick) as live, httpx.AsyncClient(base_url=live.url) as client:
        sid = await new_session(client)
        async with socket(live, sid) as ws:
            await send(ws, {"type": "message", "message": "[[mock:text tokens=6]] [[mock:stall after=2 seconds=1]]"})
            received: list[dict[str, Any]] = []
            while (frame := await recv(ws))["type"] != "done":
                received.append(frame)
    assert sum(f["type"] == "heartbeat" for f in received) >= 3
    chunks = [f for f in received if f["type"] == "chunk"]
    assert_well_formed(chunks)
    assert len(text_of(chunks).split()) == 6
