"""The AG-UI translator on chunk sequences the live tests rarely produce: cut-off and refused tool calls, a stopped
turn, transient data parts, a stream that ends early, resuming after a cursor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson

from backend.chat import protocol as p
from backend.chat.agui_sse import agui_sse
from backend.chat.agui_stream import APPROVAL_SCHEMA, AguiTranslator
from backend.chat.events import (
    StepStarted,
    TextDelta,
    ToolAwaiting,
    ToolCallReady,
    ToolCallStarted,
    ToolDenied,
    ToolInputDelta,
    ToolInputFailed,
    TurnAborted,
    TurnEnded,
    TurnEvent,
    TurnStarted,
)
from backend.chat.ui_stream import UIStreamTranslator
from tests.sse import parse


def chunks_of(*events: TurnEvent) -> list[dict[str, Any]]:
    """The stored chunks of a turn that went through `events` (what the AI SDK translator publishes)."""
    ui = UIStreamTranslator()
    out = [c for e in events for c in ui.translate(e)] + ui.close("stop")
    return [orjson.loads(p.to_json(c)) for c in out]


def translated(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    agui = AguiTranslator(thread_id="t", run_id="r")
    return [e.model_dump(by_alias=True, mode="json") for c in chunks for e in agui.translate(c)]


def kinds(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_every_call_gets_a_result_even_when_it_never_ran() -> None:
    events = translated(
        chunks_of(
            TurnStarted("msg-1"),
            StepStarted(),
            ToolCallStarted("bad", "calculate"),
            ToolInputDelta("bad", '{"expr'),
            ToolInputFailed("bad", "calculate", '{"expr', "arguments are not JSON"),
            ToolCallStarted("cut", "calculate"),
            ToolInputDelta("cut", '{"a": '),
            ToolCallReady("ran", "get_current_time", {}),
            TurnEnded("stop"),
        )
    )
    results = {e["toolCallId"]: e for e in events if e["type"] == "TOOL_CALL_RESULT"}
    assert set(results) == {"bad", "cut", "ran"}
    assert "arguments are not JSON" in results["bad"]["content"]
    ends = [e["toolCallId"] for e in events if e["type"] == "TOOL_CALL_END"]
    assert sorted(ends) == ["bad", "cut", "ran"]
    args = "".join(e["delta"] for e in events if e["type"] == "TOOL_CALL_ARGS" and e["toolCallId"] == "ran")
    assert args == "{}"  # a call whose input came whole gets it as one fragment
    starts = [e for e in events if e["type"] == "TOOL_CALL_START"]
    assert {e["parentMessageId"] for e in starts} == {"msg-1-0"}
    assert kinds(events)[-2:] == ["STEP_FINISHED", "RUN_FINISHED"]


def test_calls_waiting_for_a_person_are_pending_and_a_denied_call_has_an_error_result() -> None:
    """Human in the loop: a question leaves its call without a result (the client's pending tool calls, named by
    `RUN_FINISHED`, answered by tool messages in the next run)."""
    events = translated(
        chunks_of(
            TurnStarted("msg-1"),
            StepStarted(),
            ToolCallReady("q", "ask_user", {"question": "Which one?"}),
            ToolAwaiting("q", "ask_user", "ask_user", {"question": "Which one?"}),
            TurnEnded("tool-calls"),
        )
    )
    assert "TOOL_CALL_RESULT" not in kinds(events)
    assert events[-1]["outcome"] == {"type": "success", "pendingToolCallIds": ["q"]}
    denied = translated(
        chunks_of(
            TurnStarted("msg-2"),
            StepStarted(),
            ToolDenied("a", "The user denied this call; it did not run."),
            TurnEnded("stop"),
        )
    )
    result = next(e for e in denied if e["type"] == "TOOL_CALL_RESULT")  # a call an earlier run showed
    assert result["toolCallId"] == "a" and "denied" in result["content"]


def test_an_approval_request_is_a_custom_event_and_interrupts_the_run() -> None:
    """A call to approve is announced as a `CUSTOM` event and ends the run with the `interrupt` outcome (both client
    versions know it), one interrupt per call, its id the call's approval id (what `resume` answers)."""
    chunks = chunks_of(
        TurnStarted("msg-1"),
        StepStarted(),
        ToolCallReady("q", "ask_user", {"question": "Which one?"}),
        ToolAwaiting("q", "ask_user", "ask_user", {"question": "Which one?"}),
        ToolCallReady("a", "deploy", {}),
        ToolAwaiting("a", "deploy", "approval", {}),
        TurnEnded("tool-calls"),
    )
    for outcomes in (True, False):
        agui = AguiTranslator(thread_id="t", run_id="r", outcomes=outcomes)
        events = [
            e.model_dump(by_alias=True, mode="json", exclude_none=True) for c in chunks for e in agui.translate(c)
        ]
        custom = next(e for e in events if e["type"] == "CUSTOM")
        assert custom == {
            "type": "CUSTOM",
            "name": "tool-approval-request",
            "value": {"approvalId": "approval-a", "toolCallId": "a"},
        }
        assert events[-1]["outcome"] == {
            "type": "interrupt",
            "interrupts": [
                {
                    "id": "approval-a",
                    "reason": "tool_approval",
                    "message": "Approve the call of deploy?",
                    "toolCallId": "a",
                    "responseSchema": APPROVAL_SCHEMA,
                }
            ],
        }
    # An approval answered within the run (its call got a result) interrupts nothing.
    answered = translated([*chunks[:-1], {"type": "tool-output-denied", "toolCallId": "a"}, *chunks[-1:]])
    assert answered[-1]["outcome"] == {"type": "success", "pendingToolCallIds": ["q"]}


def test_results_the_client_sent_are_not_sent_back() -> None:
    """A run whose tool messages answered calls continues the message; the client holds those results already."""
    chunks = [
        {"type": "start", "messageId": "msg-1"},
        {"type": "tool-output-available", "toolCallId": "mine", "output": "done"},
        {"type": "tool-output-denied", "toolCallId": "approved-elsewhere"},
        {"type": "finish", "finishReason": "stop"},
    ]
    agui = AguiTranslator(thread_id="t", run_id="r", client_results=["mine"])
    results = [e for c in chunks for e in agui.translate(c) if e.type == "TOOL_CALL_RESULT"]
    assert [e.tool_call_id for e in results] == ["approved-elsewhere"]


def test_a_stopped_turn_finishes_cancelled() -> None:
    events = translated(chunks_of(TurnStarted("msg-1"), StepStarted(), TextDelta("Hal"), TurnAborted("stop")))
    assert kinds(events) == [
        "STEP_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "STEP_FINISHED",
        "RUN_FINISHED",
    ]
    assert events[-1]["outcome"] == {"type": "cancelled"}
    # A 0.0.x client (what CopilotKit's runtime runs) knows only `success` and `interrupt`.
    agui = AguiTranslator(thread_id="t", run_id="r", outcomes=False)
    chunks = chunks_of(TurnStarted("msg-1"), StepStarted(), TurnAborted("stop"))
    finished = [e for c in chunks for e in agui.translate(c)][-1].model_dump(by_alias=True, mode="json")
    assert "outcome" not in finished and finished["result"] == {"cancelled": True}


def test_transient_data_is_a_custom_event_and_error_ends_the_run() -> None:
    chunks = [
        {"type": "start", "messageId": "m"},
        {"type": "data-compacting", "data": {"messages": 3}, "transient": True},
        {"type": "error", "errorText": "boom"},
        {"type": "finish", "finishReason": "error"},
    ]
    events = translated(chunks)
    assert events == [
        {"type": "CUSTOM", "name": "compacting", "value": {"messages": 3}},
        {"type": "RUN_ERROR", "message": "boom"},
    ]


async def _entries(chunks: list[dict[str, Any]], ids: list[str]) -> AsyncIterator[tuple[str, bytes | None]]:
    for cursor, chunk in zip(ids, chunks, strict=True):
        await asyncio.sleep(0)
        yield cursor, orjson.dumps(chunk)


async def _body(chunks: list[dict[str, Any]], after: str | None = None) -> list[tuple[str | None, dict[str, Any]]]:
    ids = [f"5-{i}" for i in range(1, len(chunks) + 1)]
    frames = agui_sse(_entries(chunks, ids), AguiTranslator(thread_id="t", run_id="r"), after=after)
    body = b"".join([f async for f in frames])
    return [(f.id, orjson.loads(f.data)) for f in parse(body)]


async def test_resuming_after_a_cursor_reopens_what_was_open() -> None:
    chunks = chunks_of(TurnStarted("msg-1"), StepStarted(), TextDelta("one "), TextDelta("two"), TurnEnded("stop"))
    whole = await _body(chunks)
    # The id of an entry sits on the last of its events; the first delta's entry is the third chunk.
    assert [c for c, _ in whole if c] == [f"5-{i}" for i in range(2, len(chunks) + 1)]
    rest = await _body(chunks, after="5-4")
    assert [e["type"] for _, e in rest] == [
        "RUN_STARTED",
        "STEP_STARTED",
        "TEXT_MESSAGE_START",
        "TEXT_MESSAGE_CONTENT",
        "TEXT_MESSAGE_END",
        "STEP_FINISHED",
        "RUN_FINISHED",
    ]
    assert rest[2][1]["messageId"] == "msg-1-0" and rest[3][1]["delta"] == "two"


async def test_a_stream_that_ends_early_ends_with_run_error() -> None:
    chunks = chunks_of(TurnStarted("msg-1"), StepStarted(), TextDelta("partial"))[:4]
    events = [e for _, e in await _body(chunks)]
    assert events[-1]["type"] == "RUN_ERROR" and events[-1]["code"] == "stream_lost"
