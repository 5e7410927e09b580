"""Each phase of a step on its own (`backend/chat/phases.py`), in the test's process: the real store, the mock model
over HTTP, no app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import pytest
from redis.asyncio import Redis

from backend.chat import events as ev
from backend.chat.llm import Completed, ToolCall, Usage
from backend.chat.phases import (
    KEPT,
    count_tool_round,
    prepare_prompt,
    run_tools,
    save_interrupted,
    save_step,
    settle_step,
    stream_model_call,
)
from backend.chat.turn_state import RetryStep, Step, TurnFailure, TurnState
from backend.devtools.mock_llm import MockLLMServer
from backend.store.cache import SessionCache
from backend.store.models import ChatSession
from backend.store.pending import PendingWrites
from backend.store.postgres import ChatRepository, create_pool
from backend.store.sessions import SessionStore
from tests.chat.conftest import PROMPT, Kit, StoredRows

Phase = Callable[[TurnState, Step], AsyncIterator[ev.TurnEvent]]


async def drive(phase: Phase, turn: TurnState, step: Step, events: list[ev.TurnEvent] | None = None) -> list[Any]:
    """The phase's events (into `events`, so a test that expects it to raise still sees them)."""
    events = [] if events is None else events
    async for event in phase(turn, step):
        events.append(event)
    return events


async def prompted(kit: Kit, session: ChatSession, **services: Any) -> tuple[TurnState, Step]:
    turn = await kit.turn(session, kit.services(**services))
    step = turn.next_step()
    await drive(prepare_prompt, turn, step)
    return turn, step


def call(call_id: str, name: str, arguments: dict[str, Any] | None, raw: str | None = None) -> ToolCall:
    text = raw if raw is not None else json.dumps(arguments or {})
    return ToolCall(call_id, name, text, arguments, None if arguments is not None else "not a JSON object")


def completed(*calls: ToolCall, usage: Usage | None = None) -> Completed:
    return Completed("tool_calls" if calls else "stop", list(calls), usage)


# --- prepare the prompt --------------------------------------------------------------------------------------


async def test_the_prompt_is_the_system_prompt_the_history_the_page_and_the_note(kit: Kit) -> None:
    session = await kit.session(("user", "hello"), ("assistant", "hi"), ("user", "and now?"))
    turn = await kit.turn(session, page_context={"url": "https://example.test/a", "content": "page text"}, note="why")
    step = turn.next_step()

    assert await drive(prepare_prompt, turn, step) == []

    assert [m["role"] for m in step.messages] == ["system", "user", "user", "assistant", "user", "user"]
    assert step.messages[0]["content"] == PROMPT.text
    assert 'url="https://example.test/a"' in step.messages[1]["content"]
    assert [m["content"] for m in step.messages[2:5]] == ["hello", "hi", "and now?"]
    assert step.messages[-1] == {"role": "user", "content": "why"}
    assert step.estimated_tokens == turn.window.estimate(turn.fixed_tokens) > turn.fixed_tokens


async def test_a_history_over_the_hard_mark_is_summarised_before_the_call(
    kit: Kit, mock_llm: MockLLMServer, stored_rows: StoredRows
) -> None:
    history = [("user" if i % 2 == 0 else "assistant", f"message {i} " + "word " * 60) for i in range(30)]
    session = await kit.session(*history, ("user", "the question"))
    probe = await kit.turn(session)
    # A window whose hard mark the history is over, and whose target the newest turn fits.
    window = int((probe.fixed_tokens + probe.window.live_tokens) / 0.85 * 0.9 / 0.95) + 1000
    turn = await kit.turn(session, kit.services(window=window, compactor=True))
    events = await drive(prepare_prompt, turn, turn.next_step())

    assert events == [ev.Status("compaction", {"state": "running"}), ev.Status("compaction", {"state": "done"})]
    assert turn.window.summary and turn.window.summary_through > 0
    assert "running summary" in mock_llm.requests[0]["messages"][0]["content"]  # the summariser's call
    assert len(await stored_rows(session.id)) == 31  # summarising stores nothing: the messages stay


async def test_a_history_that_cannot_fit_ends_the_turn(kit: Kit) -> None:
    session = await kit.session(("user", "hello"))
    turn = await kit.turn(session, kit.services(window=200))  # less than the system prompt and tools take
    with pytest.raises(TurnFailure) as failure:
        await drive(prepare_prompt, turn, turn.next_step())
    assert failure.value.code == "context_too_long"


# --- stream one model call -----------------------------------------------------------------------------------


async def test_the_models_text_streams_as_it_comes(kit: Kit) -> None:
    session = await kit.session(("user", "[[mock:text tokens=5]]"))
    turn, step = await prompted(kit, session)

    events = await drive(stream_model_call, turn, step)

    assert events == [ev.TextDelta(t) for t in step.text] and len(step.text) == 5
    assert step.completed is not None and step.completed.finish_reason == "stop" and step.is_reply
    [generation] = kit.telemetry.generations
    assert generation.output_text == step.content and generation.error is None
    assert generation.input_messages == step.messages


async def test_a_tool_call_is_announced_before_its_arguments_are_complete(kit: Kit) -> None:
    session = await kit.session(("user", '[[mock:tool name=calculate args={"expression": "6*7"}]]'))
    turn, step = await prompted(kit, session)

    events = await drive(stream_model_call, turn, step)

    assert isinstance(events[0], ev.ToolCallStarted) and events[0].name == "calculate"
    assert all(isinstance(e, ev.ToolInputDelta) for e in events[1:]) and len(events) > 2
    assert "".join(e.text for e in events[1:]) == '{"expression":"6*7"}'
    assert [(c.name, c.arguments) for c in step.calls] == [("calculate", {"expression": "6*7"})]


async def test_a_prompt_the_provider_finds_too_long_is_retried_once_squeezed(kit: Kit) -> None:
    session = await kit.session(("user", "[[mock:context_length]]"))
    turn, step = await prompted(kit, session, compactor=True)
    events: list[Any] = []

    with pytest.raises(RetryStep):
        await drive(stream_model_call, turn, step, events)

    assert events == [
        ev.StepFinished(),
        ev.Status("compaction", {"state": "running"}),
        ev.Status("compaction", {"state": "done"}),
    ]
    assert turn.squeeze == 0.5
    retry = turn.next_step()
    await drive(prepare_prompt, turn, retry)
    with pytest.raises(TurnFailure) as failure:  # the second time, the turn ends
        await drive(stream_model_call, turn, retry)
    assert failure.value.code == "context_length_exceeded"
    assert [g.error for g in kit.telemetry.generations] == ["the conversation is too long for the model"] * 2


async def test_a_model_error_after_text_stores_the_text_and_ends_the_turn(kit: Kit, stored_rows: StoredRows) -> None:
    session = await kit.session(("user", "[[mock:text tokens=20]] [[mock:cut after=6]]"))
    turn, step = await prompted(kit, session)
    events: list[Any] = []

    with pytest.raises(TurnFailure) as failure:
        await drive(stream_model_call, turn, step, events)

    assert failure.value.code == "connection_error"
    assert events and all(isinstance(e, ev.TextDelta) for e in events)
    key = f"{turn.request.turn_id}:0:0"
    assert (await stored_rows(session.id))[-1] == ("assistant", "".join(e.text for e in events), key, [])


# --- settle the step -----------------------------------------------------------------------------------------


async def test_a_step_with_usable_calls_settles_silently(kit: Kit) -> None:
    turn = await kit.turn(await kit.session(("user", "hi")))
    step = turn.next_step()
    step.completed = completed(call("c1", "calculate", {"expression": "1"}))
    assert await drive(settle_step, turn, step) == []


async def test_invalid_arguments_close_every_call_and_retry_the_step_then_end_the_turn(kit: Kit) -> None:
    turn = await kit.turn(await kit.session(("user", "hi")), kit.services(invalid_tool_json_retries=1))
    step = turn.next_step()
    step.completed = completed(call("c1", "calculate", None, raw='{"expression": "1'), call("c2", "calculate", {}))
    events: list[Any] = []

    with pytest.raises(RetryStep):
        await drive(settle_step, turn, step, events)

    assert events == [
        ev.ToolInputFailed("c1", "calculate", '{"expression": "1', "not a JSON object"),
        ev.ToolCallReady("c2", "calculate", {}),
        ev.ToolFinished("c2", False, None, "not run: another call of this step was invalid"),
        ev.StepFinished(),
    ]
    assert turn.json_retries == 1
    again = turn.next_step()
    again.completed = step.completed
    with pytest.raises(TurnFailure) as failure:
        await drive(settle_step, turn, again)
    assert failure.value.code == "invalid_tool_arguments"


# --- run the tools -------------------------------------------------------------------------------------------


async def test_tools_run_concurrently_and_report_as_each_finishes(kit: Kit) -> None:
    turn = await kit.turn(await kit.session(("user", "hi")))
    step = turn.next_step()
    step.completed = completed(
        call("slow", "pause", {"seconds": 0.3}), call("fast", "calculate", {"expression": "2+2"})
    )

    events = await drive(run_tools, turn, step)

    assert events[:2] == [
        ev.ToolCallReady("slow", "pause", {"seconds": 0.3}),
        ev.ToolCallReady("fast", "calculate", {"expression": "2+2"}),
    ]
    assert [(e.call_id, e.ok) for e in events[2:]] == [("fast", True), ("slow", True)]  # the quick one first
    assert set(step.outcomes) == {"slow", "fast"}
    assert [t["call_id"] for t in kit.telemetry.tools] == ["fast", "slow"]


async def test_a_step_without_calls_runs_no_tools(kit: Kit) -> None:
    turn = await kit.turn(await kit.session(("user", "hi")))
    step = turn.next_step()
    step.completed = completed()
    assert await drive(run_tools, turn, step) == [] and step.outcomes == {}


# --- save the step -------------------------------------------------------------------------------------------


async def test_a_step_is_stored_in_one_append_under_its_write_keys(kit: Kit, stored_rows: StoredRows) -> None:
    session = await kit.session(("user", "hi"))
    turn = await kit.turn(session)
    turn.next_step()
    step = turn.next_step()  # the second step of the turn
    step.text = ["let me ", "compute"]
    step.completed = completed(call("c1", "calculate", {"expression": "2+2"}), usage=Usage(100, 7))
    await drive(run_tools, turn, step)
    live_before = len(turn.window.live)

    assert await drive(save_step, turn, step) == []

    t = turn.request.turn_id
    rows = await stored_rows(session.id)
    assert rows[1:] == [
        ("assistant", "let me compute", f"{t}:1:0", ["c1"]),
        ("tool", '{"expression":"2+2","result":4}', f"{t}:1:1", []),
    ]
    assert len(turn.window.live) == live_before + 2
    fresh = await kit.store.get(session.id, "alice")
    assert (fresh.prompt_tokens, fresh.completion_tokens) == (100, 7)
    assert step.stage == "saved" and not step.kept
    assert await drive(save_step, turn, step) == []  # stored again: nothing is written twice
    assert len(await stored_rows(session.id)) == 3


async def test_a_step_postgres_does_not_take_is_kept(kit: Kit, redis: Redis, migrated_database: str) -> None:
    session = await kit.session(("user", "hi"))
    turn = await kit.turn(session)
    step = turn.next_step()
    step.text, step.completed = ["the answer"], completed()
    pool = await create_pool(migrated_database, min_size=1, max_size=1)
    await pool.close()  # Postgres no longer answers this store
    down = SessionStore(ChatRepository(pool), SessionCache(redis, ttl_seconds=60), PendingWrites(redis))
    turn.services = replace(turn.services, store=down)

    assert await drive(save_step, turn, step) == [KEPT]

    assert step.kept and step.stage == "saved"
    assert await PendingWrites(redis).any(session.id)


async def test_a_tool_step_spends_a_round_and_the_last_round_ends_the_turn(kit: Kit) -> None:
    turn = await kit.turn(await kit.session(("user", "hi")), kit.services(max_tool_rounds=2))
    step = turn.next_step()
    count_tool_round(turn, step)
    assert turn.tool_rounds == 1
    with pytest.raises(TurnFailure) as failure:
        count_tool_round(turn, step)
    assert failure.value.code == "tool_round_limit" and "2 tool rounds" in failure.value.text


async def test_a_tool_step_postgres_did_not_take_ends_the_turn(kit: Kit) -> None:
    turn = await kit.turn(await kit.session(("user", "hi")))
    step = turn.next_step()
    step.kept = True
    with pytest.raises(TurnFailure) as failure:
        count_tool_round(turn, step)
    assert failure.value.code == "storage_unavailable" and turn.tool_rounds == 0


# --- a cancelled step ----------------------------------------------------------------------------------------


async def test_a_step_cancelled_while_the_model_streams_keeps_its_text_marked(
    kit: Kit, stored_rows: StoredRows
) -> None:
    session = await kit.session(("user", "hi"))
    turn = await kit.turn(session)
    step = turn.next_step()
    step.stage, step.text = "model", ["half a ", "reply"]
    await save_interrupted(turn, step)
    assert (await stored_rows(session.id))[-1][:3] == (
        "assistant",
        "half a reply\n\n[interrupted]",
        f"{turn.request.turn_id}:0:0",
    )


async def test_a_step_cancelled_while_its_tools_run_keeps_the_calls_that_finished(
    kit: Kit, stored_rows: StoredRows
) -> None:
    session = await kit.session(("user", "hi"))
    turn = await kit.turn(session)
    step = turn.next_step()
    step.completed = completed(call("slow", "pause", {"seconds": 30}), call("fast", "calculate", {"expression": "1+1"}))
    one_done = asyncio.Event()

    async def run() -> None:
        async for event in run_tools(turn, step):
            if isinstance(event, ev.ToolFinished):
                one_done.set()

    tools = asyncio.create_task(run())
    await one_done.wait()
    tools.cancel()
    await asyncio.gather(tools, return_exceptions=True)

    await save_interrupted(turn, step)

    t = turn.request.turn_id
    assert (await stored_rows(session.id))[1:] == [
        ("assistant", "[interrupted]", f"{t}:0:0", ["fast"]),
        ("tool", '{"expression":"1+1","result":2}', f"{t}:0:1", []),
    ]


@pytest.mark.parametrize("stage", ["prompt", "settle", "saving", "saved"])
async def test_a_step_cancelled_elsewhere_stores_nothing_more(kit: Kit, stored_rows: StoredRows, stage: Any) -> None:
    session = await kit.session(("user", "hi"))
    turn = await kit.turn(session)
    step = turn.next_step()
    step.stage, step.text, step.completed = stage, ["text"], completed()
    await save_interrupted(turn, step)
    assert len(await stored_rows(session.id)) == 1
