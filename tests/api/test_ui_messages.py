"""`GET /api/chat/sessions/{id}/ui-messages` (the routes of `backend/api/ui_messages.py`): ownership, and a reply
still being generated left out (its stream replays it to `useChat`'s `resume`). The shape itself is checked against
the real `ai` package in tests/conformance/test_ui_messages.py."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.api.test_chat_stream import ALICE, new_session, send, wait_idle
from tests.conftest import LiveServer, auth

SLOW_SECOND_STEP = '[[mock:tool name=calculate args={"expression": "6*7"}]] [[mock:text tokens=1 delay_ms=250]]'
"""A first step with a tool call, then a text step of about ten tokens 250 ms apart."""


async def test_only_the_owner_reads_them(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    sid = await new_session(client)
    assert (await client.get(f"/api/chat/sessions/{sid}/ui-messages", headers=ALICE)).json() == []
    other = await client.get(f"/api/chat/sessions/{sid}/ui-messages", headers=auth("bob"))
    assert other.status_code == 404
    missing = await client.get(f"/api/chat/sessions/{uuid.uuid4()}/ui-messages", headers=ALICE)
    assert missing.status_code == 404
    assert (await client.get("/api/chat/sessions/not-a-uuid/ui-messages", headers=ALICE)).status_code == 422


async def test_a_reply_being_generated_is_left_out_until_it_ends(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    sid = await new_session(client)
    await send(client, sid, '[[mock:text content="First answer"]]', client_message_id="m-0")
    await wait_idle(client, sid)
    turn = asyncio.create_task(send(client, sid, SLOW_SECOND_STEP, client_message_id="m-1"))
    try:
        for _ in range(200):  # until the turn's first step (the tool call and its result) is stored
            detail = (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()
            if detail["messages"][-1]["role"] == "tool":
                break
            await asyncio.sleep(0.02)
        assert detail["active_task"]["status"] == "running"
        history = (await client.get(f"/api/chat/sessions/{sid}/ui-messages", headers=ALICE)).json()
        assert [(m["role"], m["id"]) for m in history][-1] == ("user", "m-1")
        assert [m["role"] for m in history] == ["user", "assistant", "user"]
    finally:
        await turn
    await wait_idle(client, sid)
    history = (await client.get(f"/api/chat/sessions/{sid}/ui-messages", headers=ALICE)).json()
    assert [m["role"] for m in history] == ["user", "assistant", "user", "assistant"]
    assert [p["type"] for p in history[-1]["parts"]] == ["step-start", "text", "tool-calculate", "step-start", "text"]
