"""Recorded streams, built with `encode()`, assembled by the real `ai` client (see `assemble.mjs`)."""

from __future__ import annotations

from typing import Any

import pytest

from backend.chat.protocol import (
    DONE,
    Abort,
    Chunk,
    DataPart,
    Error,
    Finish,
    FinishStep,
    MessageMetadata,
    Start,
    StartStep,
    TextDelta,
    TextEnd,
    TextStart,
    ToolInputAvailable,
    ToolInputDelta,
    ToolInputStart,
    ToolOutputAvailable,
    ToolOutputError,
    encode,
    heartbeat,
)
from tests.conformance.ai_sdk import assemble, violations
from tests.protocol_check import check_body


def sse(*items: Chunk | bytes) -> bytes:
    """A response body as the server sends it: one event per chunk with a cursor id, then `[DONE]`.

    `bytes` items (heartbeats) are sent as they are.
    """
    events = (item if isinstance(item, bytes) else encode(item, f"1712000000000-{n}") for n, item in enumerate(items))
    return b"".join(events) + DONE


def text(part_id: str, *deltas: str) -> list[Chunk]:
    return [TextStart(id=part_id), *(TextDelta(id=part_id, delta=d) for d in deltas), TextEnd(id=part_id)]


def assembled(body: bytes) -> dict[str, Any]:
    """The client's result for a stream it must accept without any error, and that our checker passes."""
    assert check_body(body) == []
    result = assemble(body)
    assert result["errors"] == []
    assert result["violations"] == []
    assert result["chat"]["status"] == "ready"
    assert result["chat"]["message"] == result["messages"][0]
    return result


# Text that could break SSE framing or JSON if it were not escaped.
NASTY_DELTAS = ("Hel", "lo\n\n", "data: [DONE]\n\n", "\r\nid: 9\r", 'wörld 🙂 \u2028\u0000 \\ "', ": not a comment")


def test_text_only() -> None:
    body = sse(
        Start(message_id="msg-1"),
        StartStep(),
        *text("t1", *NASTY_DELTAS),
        FinishStep(),
        Finish(finish_reason="stop"),
    )

    result = assembled(body)

    message = result["messages"][0]
    assert message["id"] == "msg-1"
    assert message["role"] == "assistant"
    assert message["parts"] == [
        {"type": "step-start"},
        {"type": "text", "text": "".join(NASTY_DELTAS), "state": "done"},
    ]
    assert result["chat"]["finishReason"] == "stop"


def test_text_and_tools_across_two_steps() -> None:
    body = sse(
        Start(message_id="msg-2"),
        StartStep(),
        *text("t1", "Let me look."),
        ToolInputStart(tool_call_id="call-1", tool_name="search"),
        ToolInputDelta(tool_call_id="call-1", input_text_delta='{"query": '),
        ToolInputDelta(tool_call_id="call-1", input_text_delta='"weather"}'),
        ToolInputAvailable(tool_call_id="call-1", tool_name="search", input={"query": "weather"}),
        ToolInputAvailable(tool_call_id="call-2", tool_name="clock", input={}),
        ToolOutputAvailable(tool_call_id="call-1", output={"hits": [{"title": "Sunny"}], "next": None}),
        heartbeat(),
        ToolOutputAvailable(tool_call_id="call-2", output=None),
        FinishStep(),
        StartStep(),
        *text("t2", "It is ", "sunny."),
        FinishStep(),
        Finish(finish_reason="stop"),
    )

    parts = assembled(body)["messages"][0]["parts"]

    assert [p["type"] for p in parts] == [
        "step-start",
        "text",
        "tool-search",
        "tool-clock",
        "step-start",
        "text",
    ]
    search, clock = parts[2], parts[3]
    assert search["toolCallId"] == "call-1"
    assert search["state"] == "output-available"
    assert search["input"] == {"query": "weather"}
    assert search["output"] == {"hits": [{"title": "Sunny"}], "next": None}
    assert clock["state"] == "output-available"
    assert "output" in clock and clock["output"] is None
    assert parts[1]["text"] == "Let me look."
    assert parts[5] == {"type": "text", "text": "It is sunny.", "state": "done"}


def test_tool_error() -> None:
    body = sse(
        Start(message_id="msg-3"),
        StartStep(),
        ToolInputAvailable(tool_call_id="call-1", tool_name="search", input={"query": "x"}),
        ToolOutputError(tool_call_id="call-1", error_text="search timed out"),
        FinishStep(),
        StartStep(),
        *text("t1", "The search failed."),
        FinishStep(),
        Finish(finish_reason="stop"),
    )

    parts = assembled(body)["messages"][0]["parts"]

    tool = parts[1]
    assert tool["type"] == "tool-search"
    assert tool["state"] == "output-error"
    assert tool["errorText"] == "search timed out"
    assert tool["input"] == {"query": "x"}
    assert parts[-1]["text"] == "The search failed."


def test_error_mid_stream_then_finish_error() -> None:
    body = sse(
        Start(message_id="msg-4"),
        StartStep(),
        *text("t1", "Partial ", "answer"),
        Error(error_text="The model provider failed."),
        FinishStep(),
        Finish(finish_reason="error"),
    )
    assert check_body(body) == []

    result = assemble(body)

    # readUIMessageStream reports the error chunk and keeps going; nothing else is wrong.
    assert result["errors"] == [{"name": "Error", "message": "The model provider failed."}]
    assert result["violations"] == []
    assert result["messages"][0]["parts"][-1] == {"type": "text", "text": "Partial answer", "state": "done"}
    # useChat stops at the error chunk: status error, error text shown, partial text kept.
    chat = result["chat"]
    assert chat["status"] == "error"
    assert chat["error"] == {"name": "Error", "message": "The model provider failed."}
    assert chat["isError"] is True
    assert chat["message"]["parts"][-1]["text"] == "Partial answer"


def test_data_parts_metadata_and_abort() -> None:
    body = sse(
        Start(message_id="msg-5", message_metadata={"model": "gpt-test"}),
        StartStep(),
        DataPart(type="data-status", id="s1", data={"phase": "searching"}),
        *text("t1", "Hi"),
        DataPart(type="data-status", id="s1", data={"phase": "done"}),
        DataPart(type="data-progress", data=0.5, transient=True),
        DataPart(type="data-note", data=None),
        FinishStep(),
        MessageMetadata(message_metadata={"usage": {"tokens": 7}}),
        Abort(reason="stopped by user"),
        Finish(finish_reason="other", message_metadata={"finishedAt": 1}),
    )

    result = assembled(body)

    assert result["chat"]["finishReason"] == "other"
    message = result["messages"][0]
    assert message["metadata"] == {"model": "gpt-test", "usage": {"tokens": 7}, "finishedAt": 1}
    assert message["parts"] == [
        {"type": "step-start"},
        {"type": "data-status", "id": "s1", "data": {"phase": "done"}},  # replaced in place, by id
        {"type": "text", "text": "Hi", "state": "done"},
        {"type": "data-note", "data": None},
    ]  # the transient part is delivered to onData only


@pytest.mark.parametrize(
    ("body", "client_error"),
    [
        (  # text-delta before text-start: the harness must be able to fail
            sse(
                Start(message_id="m"),
                StartStep(),
                TextDelta(id="t1", delta="x"),
                TextEnd(id="t1"),
                FinishStep(),
                Finish(),
            ),
            "Received text-delta for missing text part",
        ),
        (  # text continued after the step that opened it ended: v6 forgets open text at finish-step
            sse(
                Start(message_id="m"),
                StartStep(),
                TextStart(id="t1"),
                FinishStep(),
                StartStep(),
                TextDelta(id="t1", delta="x"),
                FinishStep(),
                Finish(),
            ),
            "Received text-delta for missing text part",
        ),
        (
            sse(
                Start(message_id="m"),
                StartStep(),
                ToolOutputAvailable(tool_call_id="nope", output=1),
                FinishStep(),
                Finish(),
            ),
            'No tool invocation found for tool call ID "nope"',
        ),
        (
            sse(Start(message_id="m"), ToolInputDelta(tool_call_id="c", input_text_delta="{}"), Finish()),
            "Received tool-input-delta for missing tool call",
        ),
        (  # hand-written: our models cannot produce it, v6 rejects it
            b'data: {"type":"start"}\n\ndata: {"type":"finish","finishReason":"unknown"}\n\n' + DONE,
            "Type validation failed",
        ),
    ],
    ids=[
        "delta-before-start",
        "text-across-finish-step",
        "unknown-tool-output",
        "tool-delta-before-start",
        "unknown-finish-reason",
    ],
)
def test_client_rejects_broken_streams(body: bytes, client_error: str) -> None:
    result = assemble(body)

    assert result["violations"], "the ai client accepted a broken stream"
    assert client_error in result["violations"][0]["message"]
    assert result["chat"]["status"] == "error"
    assert client_error in result["chat"]["error"]["message"]
    assert any(client_error in problem for problem in violations(body))
