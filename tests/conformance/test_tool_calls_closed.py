"""No tool part is ever left running: tool calls cut, cancelled or invalid while their arguments stream, as the
service streams them and the real `ai` 5, 6 and 7 clients assemble them.

A call cut off mid-arguments (the model's stream dropped, or the turn cancelled) is closed with `tool-input-error`
carrying the raw argument text received, and a call whose arguments are invalid JSON with `tool-input-error`
carrying the model's raw text. v5/v6 keep that text as the part's `rawInput`, v7 as its `input`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson

from tests.api.test_chat_stream import new_session, send
from tests.conformance.ai_sdk import AI_CLIENTS, assemble, violations
from tests.conftest import LiveServer, auth
from tests.sse import chunks

ALICE = auth("alice")
ARGS = {"expression": "1 + 2 + 3 + 4 + 5 + 6"}
RAW_ARGS = orjson.dumps(ARGS).decode()
Chat = tuple[httpx.AsyncClient, LiveServer]


def tool_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in message["parts"] if p["type"].startswith("tool-")]


def raw_input(part: dict[str, Any]) -> Any:
    return part["rawInput"] if "rawInput" in part else part.get("input")


def assembled_by_every_client(body: bytes) -> dict[str, list[dict[str, Any]]]:
    """The tool parts each client ends up with (both the `readUIMessageStream` and the `useChat` path); none of
    them may be left in a running state, and no client may find fault with the stream."""
    parts: dict[str, list[dict[str, Any]]] = {}
    for client in AI_CLIENTS:
        assert violations(body, client) == []
        result = assemble(body, client)
        assert result["chat"]["message"]["parts"] == result["messages"][0]["parts"], client
        parts[client] = tool_parts(result["chat"]["message"])
        states = [p["state"] for p in parts[client]]
        assert not {"input-streaming", "input-available"} & set(states), (client, states)
    return parts


async def test_a_call_cut_off_mid_arguments_is_closed_with_its_raw_input(chat: Chat) -> None:
    """Regression: when the model's stream dropped while a call's arguments streamed, the call got no closing chunk
    and every client showed the tool running forever."""
    client, _ = chat
    sid = await new_session(client)
    # Events: role, the call's header, two 8-character argument fragments, then the connection drops.
    _, body = await send(client, sid, f"[[mock:cut after=4]] [[mock:tool name=calculate args={RAW_ARGS}]]")
    received = RAW_ARGS[:16]

    sent = [c for c in chunks(body) if c["type"].startswith("tool-")]
    assert [sent[0]["type"], sent[-1]["type"]] == ["tool-input-start", "tool-input-error"]
    assert "".join(c["inputTextDelta"] for c in sent if c["type"] == "tool-input-delta") == received  # live
    assert sent[-1]["input"] == received and sent[-1]["toolName"] == "calculate"
    for client, parts in assembled_by_every_client(body).items():
        [part] = parts
        assert part["state"] == "output-error", client
        assert raw_input(part) == received, client
        assert part["errorText"], client


async def test_a_call_cancelled_mid_arguments_is_closed_with_its_raw_input(chat: Chat) -> None:
    """Regression: a reply stopped while a call's arguments streamed left the call open: a tool running forever."""
    client, _ = chat
    sid = await new_session(client)
    message = f"[[mock:tool name=calculate args={RAW_ARGS} delay_ms=300]]"  # a fragment every 0.3 s
    body = b""
    async with client.stream(
        "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}, headers=ALICE
    ) as response:
        cancel: asyncio.Task[httpx.Response] | None = None
        async for data in response.aiter_bytes():
            body += data
            if cancel is None and b'"tool-input-delta"' in body:
                cancel = asyncio.create_task(client.post(f"/api/chat/sessions/{sid}/cancel", headers=ALICE))
    assert cancel is not None and (await cancel).status_code == 200

    sent = chunks(body)
    closing = next(c for c in sent if c["type"] == "tool-input-error")
    assert RAW_ARGS.startswith(closing["input"]) and 0 < len(closing["input"]) < len(RAW_ARGS)
    assert [c["type"] for c in sent][-2:] == ["abort", "finish"]
    for client_name, parts in assembled_by_every_client(body).items():
        [part] = parts
        assert part["state"] == "output-error", client_name
        assert raw_input(part) == closing["input"], client_name


async def test_invalid_arguments_reach_the_client_as_an_input_error_with_the_raw_text(chat: Chat) -> None:
    """Regression: a call with invalid JSON arguments reached the client as an output error without any input."""
    client, _ = chat
    sid = await new_session(client)
    message = f"[[mock:bad_tool_args name=calculate args={RAW_ARGS} times=1 key=conformance]]"
    _, body = await send(client, sid, message)  # the step is retried once, and then the call is valid

    invalid = next(c for c in chunks(body) if c["type"] == "tool-input-error")
    assert invalid["input"] == RAW_ARGS[:-1]  # exactly what the model sent: its last character cut off
    assert "not valid JSON" in invalid["errorText"]
    for client_name, parts in assembled_by_every_client(body).items():
        failed, retried = parts
        assert failed["state"] == "output-error", client_name
        assert raw_input(failed) == RAW_ARGS[:-1], client_name
        assert "not valid JSON" in failed["errorText"], client_name
        assert retried["state"] == "output-available" and retried["input"] == ARGS, client_name
        assert retried["output"]["result"] == 21, client_name
