"""A WebSocket is authorised only as long as its token: at the token's `exp` the server closes it with 4401.

A real server, WebSocket client, mock model, Postgres and Redis; the tokens expire in about two seconds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from backend.config import Settings
from tests.conftest import LiveServer, auth, make_token

Chat = tuple[httpx.AsyncClient, LiveServer]


async def new_session(client: httpx.AsyncClient) -> str:
    r = await client.post("/api/chat/sessions", json={"title": "t"}, headers=auth("alice"))
    assert r.status_code == 201
    return str(r.json()["id"])


def ws_url(live: LiveServer, sid: str, token: str) -> str:
    return f"ws://127.0.0.1:{live.port}/api/chat/sessions/{sid}/ws?token={token}"


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(frame).decode())


async def recv(ws: ClientConnection) -> dict[str, Any]:
    frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
    return frame


async def closed_with(ws: ClientConnection) -> tuple[int, str, list[dict[str, Any]]]:
    """Read until the server closes the socket: its close code and reason, and the frames received before."""
    frames: list[dict[str, Any]] = []
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            frames.append(await recv(ws))  # a socket left open would time out here
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason, frames


async def test_an_idle_socket_is_closed_with_4401_when_its_token_expires(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    opened = time.monotonic()
    async with connect(ws_url(live, sid, make_token("alice", ttl=2)), proxy=None, open_timeout=5) as ws:
        await send(ws, {"type": "ping"})
        assert await recv(ws) == {"type": "pong"}  # authorised while the token is valid
        code, reason, frames = await closed_with(ws)
    assert (code, frames) == (4401, [])
    assert "expired" in reason
    assert time.monotonic() - opened >= 0.9  # closed at the token's expiry, not at once


async def test_a_socket_following_a_turn_is_closed_at_expiry_and_a_fresh_token_resumes_it(chat: Chat) -> None:
    client, live = chat
    sid = await new_session(client)
    async with connect(ws_url(live, sid, make_token("alice", ttl=2)), proxy=None, open_timeout=5) as ws:
        await send(ws, {"type": "message", "message": "[[mock:text tokens=400 delay_ms=15]]"})
        code, _, frames = await closed_with(ws)
    assert code == 4401
    assert any(f["type"] == "chunk" for f in frames)  # it was streaming when the token ran out
    last = [f["id"] for f in frames if f["type"] == "chunk"][-1]

    # Closing the socket never stops the turn: a fresh token picks it up where the old socket left it.
    async with connect(ws_url(live, sid, make_token("alice")), proxy=None, open_timeout=5) as ws:
        await send(ws, {"type": "resume", "after": last})
        rest = []
        while (frame := await recv(ws))["type"] != "done":
            rest.append(frame)
    chunks = [f["chunk"] for f in rest if f["type"] == "chunk"]
    assert chunks and chunks[-1]["type"] == "finish" and chunks[-1]["finishReason"] == "stop"


async def test_development_auth_sockets_have_no_expiry(chat_settings: Settings) -> None:
    # A dev-auth socket carries no token, so nothing closes it; it still answers after the test tokens' lifetime.
    dev = chat_settings.model_copy(update={"dev_auth": True})
    async with LiveServer(dev) as live, httpx.AsyncClient(base_url=live.url) as client:
        sid = (await client.post("/api/chat/sessions", json={"title": "t"})).json()["id"]
        url = f"ws://127.0.0.1:{live.port}/api/chat/sessions/{sid}/ws"
        async with connect(url, proxy=None, open_timeout=5) as ws:
            await asyncio.sleep(2.5)
            await send(ws, {"type": "ping"})
            assert await recv(ws) == {"type": "pong"}
