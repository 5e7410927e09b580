"""Every input an attacker's review found reaching Postgres or Redis unvalidated, over HTTP and the WebSocket.

Each bad input must get a 4xx with `{"error": {"code", "message"}}` (or an `error` frame on a socket that stays
usable), and must leave nothing behind: the session keeps its title, metadata and messages.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.api.test_ws import recv, send, socket, until_done
from tests.conftest import LiveServer, auth
from tests.sse import read_stream, text_of

ALICE = auth("alice")
Chat = tuple[httpx.AsyncClient, LiveServer]
NUL = "a\u0000b"
UINT64_PLUS_ONE = "18446744073709551616"


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def ui_message(text: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"id": "u-1", "role": "user", "parts": [{"type": "text", "text": text}]} | fields


def use_chat(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"id": "chat", "messages": list(messages), "trigger": "submit-message"}


def list_cursor(stamp: str, ident: str | None = None) -> str:
    raw = f"{stamp}|{ident or uuid.uuid4()}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# (what, body) pairs refused on POST /api/chat/sessions with 422 naming `field`.
SESSION_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("NUL in title", {"title": NUL}, "title"),
    ("NUL in a metadata value", {"metadata": {"page": NUL}}, "metadata"),
    ("NUL in a metadata key", {"metadata": {NUL: 1}}, "metadata"),
    ("NUL deep in metadata", {"metadata": {"a": [{"b": ["x", NUL]}]}}, "metadata"),
    ("a lone surrogate in a metadata key", {"metadata": {"\ud800": 1}}, "metadata"),
    ("a lone surrogate in a metadata value", {"metadata": {"a": {"b": "x\udfff"}}}, "metadata"),
    ("a lone surrogate in the title", {"title": "\ud800"}, "title"),
    ("metadata integer above 2^64", {"metadata": {"n": 2**64}}, "metadata"),
    ("metadata integer below -2^63", {"metadata": {"n": -(2**63) - 1}}, "metadata"),
    ("metadata integer above 2^53", {"metadata": {"n": 2**53 + 1}}, "metadata"),
    ("metadata nested deeper than 8", {"metadata": nested(9)}, "metadata"),
    ("metadata above 16 KB", {"metadata": {"blob": "x" * 17_000}}, "metadata"),
    ("metadata with many small values above 16 KB", {"metadata": {f"k{i}": i for i in range(3000)}}, "metadata"),
]


@pytest.mark.parametrize(("what", "body", "field"), SESSION_BODIES, ids=[c[0] for c in SESSION_BODIES])
async def test_bad_session_bodies_are_422_and_write_nothing(
    client: httpx.AsyncClient, db: asyncpg.Connection, what: str, body: dict[str, Any], field: str
) -> None:
    # Encoded with \u escapes: a lone surrogate is valid JSON text but cannot be sent as UTF-8.
    content = json.dumps(body).encode()
    r = await client.post("/api/chat/sessions", content=content, headers=ALICE | {"content-type": "application/json"})
    assert r.status_code == 422, (what, r.status_code, r.text[:300])
    error = r.json()["error"]
    assert error["code"] == "invalid_request" and field in error["message"], error
    assert await db.fetchval("SELECT count(*) FROM chat_sessions") == 0


async def test_non_finite_metadata_numbers_are_422(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    for literal in (b"NaN", b"Infinity", b"-Infinity", b"1e400"):
        body = b'{"metadata": {"x": ' + literal + b"}}"
        r = await client.post("/api/chat/sessions", content=body, headers=ALICE | {"content-type": "application/json"})
        assert r.status_code == 422, (literal, r.text[:300])
        assert "metadata" in r.json()["error"]["message"]
    assert await db.fetchval("SELECT count(*) FROM chat_sessions") == 0


async def test_metadata_within_the_bounds_is_kept_exactly(client: httpx.AsyncClient) -> None:
    metadata = {"page": "/x", "n": 2**53, "m": -(2**53), "f": 1.5, "deep": nested(7), "blob": "y" * 15_000}
    r = await client.post("/api/chat/sessions", json={"metadata": metadata}, headers=ALICE)
    assert r.status_code == 201, r.text[:300]
    assert r.json()["metadata"] == metadata


async def test_a_nul_in_a_new_title_is_422_and_keeps_the_old_one(client: httpx.AsyncClient) -> None:
    sid = (await client.post("/api/chat/sessions", json={"title": "kept"}, headers=ALICE)).json()["id"]
    r = await client.patch(f"/api/chat/sessions/{sid}", json={"title": NUL}, headers=ALICE)
    assert r.status_code == 422 and "title" in r.json()["error"]["message"], r.text[:300]
    assert (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()["title"] == "kept"


@pytest.mark.parametrize("after", ["9223372036854775808", "2147483648", "-1", str(2**70)])
async def test_message_paging_out_of_postgres_range_is_422(client: httpx.AsyncClient, after: str) -> None:
    sid = (await client.post("/api/chat/sessions", json={}, headers=ALICE)).json()["id"]
    r = await client.get(f"/api/chat/sessions/{sid}", params={"after": after}, headers=ALICE)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["error"]["code"] == "invalid_request" and "after" in r.json()["error"]["message"]
    ok = await client.get(f"/api/chat/sessions/{sid}", params={"after": 2**31 - 1}, headers=ALICE)
    assert ok.status_code == 200 and ok.json()["messages"] == []


@pytest.mark.parametrize(
    "cursor",
    [
        list_cursor("9999-12-31T23:59:59-23:59"),  # beyond datetime's range once in UTC
        list_cursor("0001-01-01T00:00:00+23:59"),
        list_cursor("2024-01-01T00:00:00"),  # no time zone
        list_cursor("2024-01-01T00:00:00+00:00\u0000"),
        list_cursor("2024-01-01T00:00:00+00:00", "0" * 31 + "\u0000"),
        "A" * 201,
        "not*base64",
    ],
)
async def test_bad_session_list_cursors_are_4xx(client: httpx.AsyncClient, cursor: str) -> None:
    r = await client.get("/api/chat/sessions", params={"cursor": cursor}, headers=ALICE)
    assert r.status_code in (400, 422), (cursor, r.status_code, r.text[:300])
    assert r.json()["error"]["code"] in ("bad_request", "invalid_request")


# --- turns -------------------------------------------------------------------------------------------


async def new_session(client: httpx.AsyncClient) -> str:
    r = await client.post("/api/chat/sessions", json={"title": "t"}, headers=ALICE)
    assert r.status_code == 201
    return str(r.json()["id"])


# (what, body, field) refused on both turn endpoints, and as a `message` frame over the WebSocket.
TURN_BODIES: list[tuple[str, dict[str, Any], str]] = [
    ("NUL in the message", {"message": NUL}, "message"),
    ("NUL in client_message_id", {"message": "hi", "client_message_id": NUL}, "client_message_id"),
    ("NUL in the page url", {"message": "hi", "context": {"url": NUL}}, "url"),
    ("NUL in the page content", {"message": "hi", "context": {"content": NUL}}, "content"),
    ("NUL in a useChat text part", use_chat(ui_message(NUL)), "text"),
    ("NUL in a useChat message id", use_chat(ui_message(id=NUL)), "id"),
    ("NUL in an earlier useChat message", use_chat(ui_message(NUL, id="u-0"), ui_message()), "text"),
    ("useChat message id of 500,000 characters", use_chat(ui_message(id="x" * 500_000)), "id"),
    ("useChat message id of 201 characters", use_chat(ui_message(id="x" * 201)), "id"),
    ("useChat chat id of 201 characters", use_chat(ui_message()) | {"id": "x" * 201}, "id"),
    ("useChat message that is not an object", use_chat("hello"), "messages"),  # type: ignore[arg-type]
    ("useChat parts that are not a list", use_chat(ui_message() | {"parts": "hi"}), "parts"),
    ("useChat with 10,001 messages", use_chat(*[{"role": "user", "parts": []}] * 10_001), "messages"),
    ("useChat message with 1,001 parts", use_chat(ui_message() | {"parts": [{"type": "x"}] * 1001}), "parts"),
    ("useChat message with an unknown role", use_chat(ui_message(role="tool")), "role"),
]


@pytest.mark.parametrize("endpoint", ["stream", "messages"])
async def test_bad_turn_bodies_are_422_and_store_nothing(chat: Chat, db: asyncpg.Connection, endpoint: str) -> None:
    # One server for the whole table: a server per case would spend most of the run starting servers.
    client, _ = chat
    sid = await new_session(client)
    for what, body, field in TURN_BODIES:
        r = await client.post(f"/api/chat/sessions/{sid}/{endpoint}", json=body, headers=ALICE)
        assert r.status_code == 422, (what, r.status_code, r.text[:300])
        error = r.json()["error"]
        assert error["code"] == "invalid_request" and field in error["message"], (what, error)
    assert await db.fetchval("SELECT count(*) FROM chat_messages") == 0
    # Nothing was claimed either: the next good message starts a turn at once.
    good = {"message": '[[mock:text content="ok"]]'}
    response, stream = await read_stream(client, "POST", f"/api/chat/sessions/{sid}/stream", json=good, headers=ALICE)
    assert response.status_code == 200 and text_of(stream) == "ok"


async def running_task(client: httpx.AsyncClient, sid: str) -> str:
    """Start a slow turn; its task id once its stream has begun."""
    body = {"message": "[[mock:text tokens=40 delay_ms=20]]"}
    async with client.stream("POST", f"/api/chat/sessions/{sid}/stream", json=body, headers=ALICE) as response:
        assert response.status_code == 200
        return response.headers["x-copilot-task-id"]


async def test_stream_cursors_above_uint64_are_refused_before_the_stream_starts(chat: Chat) -> None:
    client, _ = chat
    sid = await new_session(client)
    task = await running_task(client, sid)
    url = f"/api/chat/tasks/{task}/stream"
    for cursor in (f"{UINT64_PLUS_ONE}-0", f"0-{UINT64_PLUS_ONE}", "99999999999999999999-99999999999999999999"):
        for params, headers in (({"after": cursor}, {}), ({}, {"last-event-id": cursor})):
            r = await client.get(url, params=params, headers=ALICE | headers)
            assert r.status_code == 422, (cursor, headers, r.status_code, r.text[:300])
            assert r.json()["error"]["code"] == "invalid_request"
    # The largest valid cursor is accepted (the stream starts; nothing is after it, so it is not read to its end).
    top = f"{2**64 - 1}-{2**64 - 1}"
    async with client.stream("GET", url, params={"after": top}, headers=ALICE) as response:
        assert response.status_code == 200


# --- the WebSocket -----------------------------------------------------------------------------------


async def test_bad_message_frames_get_an_error_frame_and_the_socket_stays_usable(
    chat: Chat, db: asyncpg.Connection
) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        for what, body, field in TURN_BODIES:
            await send(ws, {"type": "message", **body})
            error = await recv(ws)
            assert error["type"] == "error" and error["code"] == "invalid_request", (what, error)
            assert field in error["message"], (what, error)
        assert await db.fetchval("SELECT count(*) FROM chat_messages") == 0
        await send(ws, {"type": "message", "message": '[[mock:text content="still here"]]'})
        frames, _ = await until_done(ws)
    assert "".join(f["chunk"]["delta"] for f in frames if f["chunk"]["type"] == "text-delta") == "still here"


@pytest.mark.parametrize("after", [f"{UINT64_PLUS_ONE}-0", f"0-{UINT64_PLUS_ONE}"])
async def test_a_resume_cursor_above_uint64_gets_an_error_frame(chat: Chat, after: str) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        await send(ws, {"type": "message", "message": "[[mock:text tokens=40 delay_ms=20]]"})
        await recv(ws)
        async with socket(live, sid) as other:
            await send(other, {"type": "resume", "after": after})
            error = await recv(other)
            assert error["type"] == "error" and error["code"] == "invalid_request", error
            await send(other, {"type": "ping"})
            assert await recv(other) == {"type": "pong"}
        await until_done(ws)


async def test_an_unexpected_failure_is_an_error_frame_not_a_dropped_socket(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        runtime = live.app.state.runtime
        real = runtime.admission.active_task

        async def broken(session_id: uuid.UUID) -> Any:
            raise RuntimeError("redis went away")

        runtime.admission.active_task = broken
        try:
            await send(ws, {"type": "resume"})
            error = await asyncio.wait_for(recv(ws), 5)
        finally:
            runtime.admission.active_task = real
        assert error["type"] == "error" and error["code"] == "internal_error", error
        assert "redis went away" not in orjson.dumps(error).decode()
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}
