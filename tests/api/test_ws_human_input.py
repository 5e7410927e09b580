"""Human in the loop over the WebSocket: `ask_human` beside an `ask_user` call, `reply`, `tool_output` and
`approval` frames answering calls, `waiting` while others of the message wait, and the continuation followed."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from backend.config import Settings
from tests.api.test_ws import ALICE, new_session, recv, send, socket
from tests.conftest import LiveServer

HIGHLIGHT = {"name": "highlight_element", "inputSchema": {"type": "object", "properties": {"s": {"type": "string"}}}}


async def until_done(ws: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The chunks up to `done`, and the other frames seen on the way (heartbeats left out)."""
    chunks, others = [], []
    while (frame := await recv(ws))["type"] != "done":
        if frame["type"] == "chunk":
            chunks.append(frame["chunk"])
        elif frame["type"] != "heartbeat":
            others.append(frame)
    return chunks, others


async def test_ask_human_and_reply_frames(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        ask = '[[mock:tool name=ask_user args={"question": "Which size?", "choices": ["S", "M"]}]]'
        await send(ws, {"type": "message", "message": ask})
        chunks, others = await until_done(ws)
        call_id = next(c["toolCallId"] for c in chunks if c["type"] == "tool-input-available")
        assert others == [
            {"type": "ask_human", "tool_call_id": call_id, "question": "Which size?", "choices": ["S", "M"]}
        ]
        assert chunks[-1]["finishReason"] == "tool-calls"
        await send(ws, {"type": "reply", "tool_call_id": call_id, "answer": "M"})
        continued, _ = await until_done(ws)
        assert {"type": "tool-output-available", "toolCallId": call_id, "output": "M"} in continued
        assert "M" in "".join(c.get("delta", "") for c in continued)


async def test_tool_output_frames_wait_for_every_call_of_the_message(
    chat: tuple[httpx.AsyncClient, LiveServer],
) -> None:
    client, live = chat
    sid = await new_session(client)
    async with socket(live, sid) as ws:
        two = (
            '[[mock:tool name=highlight_element args={"s": "a"}]] [[mock:tool name=highlight_element args={"s": "b"}]]'
        )
        await send(ws, {"type": "message", "message": two, "tools": [HIGHLIGHT]})
        chunks, _ = await until_done(ws)
        first, second = [c["toolCallId"] for c in chunks if c["type"] == "tool-input-available"]
        await send(ws, {"type": "tool_output", "tool_call_id": first, "output": {"ok": 1}})
        assert await recv(ws) == {"type": "waiting", "tool_call_ids": [second]}
        await send(ws, {"type": "tool_output", "tool_call_id": second, "error": "gone"})
        continued, _ = await until_done(ws)
        assert [c["type"] for c in continued if c["type"].startswith("tool-output")] == [
            "tool-output-available",
            "tool-output-error",
        ]
        # A resend is answered with the same continuation, not a second one.
        await send(ws, {"type": "tool_output", "tool_call_id": second, "error": "gone"})
        again, _ = await until_done(ws)
        assert again == continued


@pytest.fixture
def approval_settings(chat_settings: Settings) -> Settings:
    return chat_settings.model_copy(update={"tools_requiring_approval": ["calculate"]})


async def test_approval_frame(approval_settings: Settings) -> None:
    async with LiveServer(approval_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        async with socket(live, sid) as ws:
            await send(ws, {"type": "message", "message": '[[mock:tool name=calculate args={"expression": "6*7"}]]'})
            chunks, _ = await until_done(ws)
            [asked] = [c for c in chunks if c["type"] == "tool-approval-request"]
            await send(ws, {"type": "approval", "tool_call_id": asked["toolCallId"], "approved": True})
            continued, _ = await until_done(ws)
            [output] = [c for c in continued if c["type"] == "tool-output-available"]
            assert output["output"]["result"] == 42
            # An unknown call is refused on the socket, which stays open.
            await send(ws, {"type": "approval", "tool_call_id": "call_nope", "approved": True})
            error = await recv(ws)
            assert error["type"] == "error" and error["code"] == "not_found"
            await send(ws, {"type": "ping"})
            assert (await recv(ws))["type"] == "pong"
        assert (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()["awaiting"] == []
