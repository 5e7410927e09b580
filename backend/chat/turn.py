"""One turn of a conversation: call the model, run the tools it asks for, call it again, until it is done.

`stream_chat_completion` is the turn, as an async generator of turn events, and reads like its diagram: load the
context, then step by step prepare the prompt → stream one model call → settle the step → run its tools → save it,
until the model answers without calling tools, or calls one that waits for a person (a frontend tool, `ask_user`, a
tool needing approval: the turn ends there; the answers start a continuation, which first settles them). Each phase
is a function of `phases.py`. There is one way out on failure (`TurnFailure`: `error`, then the end) and one place
that stores what a cancelled step produced.

Every step's assistant message and tool results are stored in one append when the step ends. A step that must be
taken again (the provider found the prompt too long; the model's tool arguments were not JSON) is a new step that
spends no tool round: `max_tool_rounds` counts the steps whose tools ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from backend.chat import events as ev
from backend.chat.llm_ahead import CallAhead
from backend.chat.phases import (
    compact_later,
    count_tool_round,
    must_compact,
    prepare_prompt,
    run_tools,
    save_interrupted,
    save_step,
    settle_step,
    stream_model_call,
)
from backend.chat.resumption import settle_answered
from backend.chat.system_prompt import SystemPrompt
from backend.chat.turn_state import NO_FACTS, RetryStep, Step, TurnFailure, TurnRequest, TurnServices, TurnState
from backend.chat.usage import finish_metadata
from backend.observability.telemetry import NullTelemetry, TurnTelemetry

PHASES = (prepare_prompt, stream_model_call, settle_step, run_tools, save_step)
"""The phases of a step, in order."""


async def stream_chat_completion(
    request: TurnRequest, prompt: SystemPrompt, services: TurnServices, telemetry: TurnTelemetry | None = None
) -> AsyncIterator[ev.TurnEvent]:
    """Run one turn for `request` with the system prompt `prompt`; yield what happens as turn events.

    Failures of the turn's own making (the model's errors after its retries, a history that no longer fits,
    invalid tool arguments after the retries, the tool-round cap, a tool step Postgres did not take) end it with
    `TurnFailed` and `TurnEnded("error")`; `StorageUnavailable` while loading the history and anything unexpected
    propagate. A cancellation stores the current step's partial output, marked interrupted, then goes on."""
    telemetry = telemetry or NullTelemetry().turn_started(NO_FACTS)
    message_id = request.resume.message_id if request.resume else f"msg-{request.turn_id}"
    yield ev.TurnStarted(message_id=message_id, metadata={"taskId": request.turn_id})
    if request.resume is not None:
        async for event in settle_answered(request, services, telemetry):
            yield event
    turn = await TurnState.open(request, prompt, services, telemetry)
    step: Step | None = None
    try:
        while True:
            step = turn.next_step()
            yield ev.StepStarted()
            try:
                for phase in PHASES:
                    async for event in phase(turn, step):
                        yield event
            except RetryStep:
                continue  # the phase ended the step
            yield ev.StepFinished()
            if step.is_last:
                break
            count_tool_round(turn, step)
        assert step.completed is not None
        yield ev.TurnEnded(step.completed.finish_reason, _finish_metadata(turn), session_freed=step.freed_session)
        if not step.kept:
            compact_later(turn)
    except TurnFailure as failure:
        yield ev.TurnFailed(failure.text, failure.code)
        yield ev.TurnEnded("error", _finish_metadata(turn))
    except (asyncio.CancelledError, GeneratorExit):
        if step is not None:
            await save_interrupted(turn, step)
        raise


async def send_first_call_ahead(request: TurnRequest, prompt: SystemPrompt, services: TurnServices) -> CallAhead | None:
    """Send the first model call of the turn `request` would run, built as its first step builds it, before the
    turn runs: the caller stores the user message meanwhile and then runs the turn with `ahead` set. Nothing is
    stored or shown here. None when the first step would not call the model at once (a continuation that settles
    answers first, a history to summarise first, one that no longer fits) or its call cannot be sent ahead."""
    if request.resume is not None:
        return None
    turn = await TurnState.open(request, prompt, services, None)
    if must_compact(turn):
        return None
    step = turn.next_step()
    events = prepare_prompt(turn, step)
    try:
        async for _ in events:
            return None  # it compacts after all: no guess
    except TurnFailure:
        return None
    finally:
        await events.aclose()  # type: ignore[attr-defined]
    return services.llm.send_ahead(step.messages, turn.tools.schemas())


def _finish_metadata(turn: TurnState) -> dict[str, Any] | None:
    return finish_metadata(turn.services.llm.model, turn.usage, turn.services.prices)
