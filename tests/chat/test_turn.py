"""A whole turn through its entry point, `stream_chat_completion` (`backend/chat/turn.py`), in the test's process:
the real store, the mock model over HTTP, no app."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from backend.chat import events as ev
from backend.chat.turn import stream_chat_completion
from backend.chat.turn_state import TurnRequest, TurnServices
from tests.chat.conftest import PROMPT, Kit, StoredRows

CALCULATE = '[[mock:tool name=calculate args={"expression": "6*7"}]]'


async def run(kit: Kit, request: TurnRequest, services: TurnServices | None = None) -> list[Any]:
    return [e async for e in stream_chat_completion(request, PROMPT, services or kit.services(), kit.telemetry)]


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events if not isinstance(e, (ev.TextDelta, ev.ToolInputDelta))]


async def test_a_reply_is_one_step_stored_under_its_write_key(kit: Kit, stored_rows: StoredRows) -> None:
    session = await kit.session(("user", "[[mock:text tokens=4]]"))
    request = kit.request(session)

    events = await run(kit, request)

    assert events[0] == ev.TurnStarted(message_id=f"msg-{request.turn_id}", metadata={"taskId": request.turn_id})
    assert kinds(events) == ["TurnStarted", "StepStarted", "StepFinished", "TurnEnded"]
    end = events[-1]
    assert isinstance(end, ev.TurnEnded) and end.finish_reason == "stop"
    assert end.metadata is not None and end.metadata["model"] == "mock-model"
    assert end.metadata["usage"]["completionTokens"] == 4 and "costUsd" not in end.metadata  # no price set
    text = "".join(e.text for e in events if isinstance(e, ev.TextDelta))
    assert (await stored_rows(session.id))[1:] == [("assistant", text, f"{request.turn_id}:0:0", [])]


async def test_a_tool_round_then_the_reply(kit: Kit, stored_rows: StoredRows) -> None:
    session = await kit.session(("user", CALCULATE))
    request = kit.request(session)

    events = await run(kit, request)

    assert kinds(events) == [
        "TurnStarted",
        "StepStarted",
        "ToolCallStarted",
        "ToolCallReady",
        "ToolFinished",
        "StepFinished",
        "StepStarted",
        "StepFinished",
        "TurnEnded",
    ]
    t = request.turn_id
    rows = await stored_rows(session.id)
    assert [(role, key) for role, _, key, _ in rows[1:]] == [
        ("assistant", f"{t}:0:0"),
        ("tool", f"{t}:0:1"),
        ("assistant", f"{t}:1:0"),
    ]
    assert "calculate returned" in (rows[-1][1] or "")


@pytest.mark.parametrize(
    "retried",
    [
        '[[mock:bad_tool_args name=calculate args={"expression": "6*7"} times=1 key=json]]',
        "[[mock:context_length times=1 key=overflow]] " + CALCULATE,
    ],
    ids=["invalid tool arguments", "context overflow"],
)
async def test_a_retried_model_call_does_not_spend_a_tool_round(
    kit: Kit, stored_rows: StoredRows, retried: str
) -> None:
    session = await kit.session(("user", retried))
    request = kit.request(session)

    events = await run(kit, request, kit.services(max_tool_rounds=1))

    # The retry is a step of its own (its write keys count it) but the turn still gets its one tool round.
    assert kinds(events).count("StepStarted") == 2
    t = request.turn_id
    rows = await stored_rows(session.id)
    assert [(role, key) for role, _, key, _ in rows[1:]] == [("assistant", f"{t}:1:0"), ("tool", f"{t}:1:1")]
    assert events[-2] == ev.TurnFailed("Stopped after 1 tool rounds in one turn.", "tool_round_limit")
    assert isinstance(events[-1], ev.TurnEnded) and events[-1].finish_reason == "error"
    assert events[-1].metadata is not None  # a failed turn still reports what its calls used


async def test_a_failure_ends_the_turn_once(kit: Kit, stored_rows: StoredRows) -> None:
    session = await kit.session(("user", "[[mock:region_block]]"))

    events = await run(kit, kit.request(session))

    assert kinds(events) == ["TurnStarted", "StepStarted", "TurnFailed", "TurnEnded"]
    assert events[-2].code == "unsupported_country_region_territory" and events[-1] == ev.TurnEnded("error")
    assert len(await stored_rows(session.id)) == 1  # nothing was produced, nothing stored


async def test_a_cancelled_turn_stores_its_partial_reply_and_goes_on_cancelling(
    kit: Kit, stored_rows: StoredRows
) -> None:
    session = await kit.session(("user", "[[mock:text tokens=200 delay_ms=10]]"))
    request = kit.request(session)
    seen: list[str] = []
    some_text = asyncio.Event()

    async def consume() -> None:
        async for event in stream_chat_completion(request, PROMPT, kit.services(), kit.telemetry):
            if isinstance(event, ev.TextDelta):
                seen.append(event.text)
                if len(seen) == 5:
                    some_text.set()

    turn = asyncio.create_task(consume())
    await some_text.wait()
    turn.cancel()
    with pytest.raises(asyncio.CancelledError):
        await turn

    [(role, content, key, _)] = (await stored_rows(session.id))[1:]
    assert (role, key) == ("assistant", f"{request.turn_id}:0:0")
    assert content == "".join(seen) + "\n\n[interrupted]"


async def test_a_continuation_tells_the_model_why_it_speaks(kit: Kit, stored_rows: StoredRows, mock_llm: Any) -> None:
    session = await kit.session(("user", "[[mock:text tokens=3]]"), ("assistant", "done"))
    events = await run(kit, kit.request(session, note="<operation_finished/>"))

    assert isinstance(events[-1], ev.TurnEnded) and events[-1].finish_reason == "stop"
    assert mock_llm.requests[-1]["messages"][-1] == {"role": "user", "content": "<operation_finished/>"}
    assert [r[0] for r in await stored_rows(session.id)] == ["user", "assistant", "assistant"]  # the note is not
