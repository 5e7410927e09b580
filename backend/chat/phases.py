"""The phases of a step, one function each, in the order `stream_chat_completion` runs them: prepare the prompt,
stream one model call, settle the step, run its tools, save it.

Each phase is an async generator of turn events that reads and updates the turn's `TurnState` and the `Step`. A
phase that ends the turn raises `TurnFailure`; one that wants the step taken again raises `RetryStep`, having ended
the step itself. Nothing of a step is stored before `save_step`, except a model error's partial text; a cancelled
step is stored by `save_interrupted`, from what its stage says it has.

A step's messages carry write keys (`<turn id>:<step>:<index>`), so storing a step again (a retry whose first
attempt committed, a copy kept in Redis, a dead owner's partial reply stored by another pod) writes nothing twice.
While Postgres does not answer a step is retried within the turn, then kept in Redis for later (`append_or_keep`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import orjson

from backend.chat import events as ev
from backend.chat import llm
from backend.chat.operation_runner import Started
from backend.chat.tokens import truncate_middle
from backend.chat.turn_state import INTERRUPTED_MARK, RetryStep, Step, TurnFailure, TurnState, step_key
from backend.errors import ModelError
from backend.observability.telemetry import Generation
from backend.store.models import AwaitingKind, ChatMessage, NewMessage
from backend.tools.base import ToolContext, ToolOutcome, run_tool

log = logging.getLogger("copilot.turn")

TOO_LONG_TEXT = (
    "This conversation no longer fits the model's context window, even summarised. Please start a new session."
)
INVALID_ARGUMENTS_TEXT = "The model produced invalid tool arguments."
STOPPED_UNSTORED_TEXT = (
    "The reply stopped after its tool calls because the database is unavailable. What it produced is kept and "
    "saved as soon as the database is back; ask again then to continue."
)

NOT_ANSWERED = orjson.dumps(
    {"error": {"type": "not_answered", "message": "No answer came from the user: this call did not run."}}
).decode()
"""The placeholder of a call waiting for a person: what the model reads if no answer ever replaces it."""
_CANNOT_WAIT = ToolOutcome(
    False,
    {"error": {"type": "tool_error", "message": "This call needs the user, and this server cannot wait for one."}},
    "This call needs the user, and this server cannot wait for one.",
    0.0,
)

KEPT = ev.Status("storage", {"state": "kept"})
"""Transient: the step's messages wait in Redis for Postgres; they are stored as soon as it answers."""


async def prepare_prompt(turn: TurnState, step: Step) -> AsyncIterator[ev.TurnEvent]:
    """Fit the history to the budget (summarising it first when it is over the hard mark) and build the prompt."""
    services, window = turn.services, turn.window
    policy = services.policy
    if must_compact(turn):
        async for event in _compact(turn, keep_tokens=policy.keep_tokens):
            yield event
    available = int(policy.budget.limit * turn.squeeze / policy.calibration.ratio) - turn.fixed_tokens
    messages = window.prompt(turn.prompt.text, turn.page_context, available=available, counter=services.counter)
    if messages is None:
        raise TurnFailure(TOO_LONG_TEXT, "context_too_long")
    if turn.request.note:
        messages.append({"role": "user", "content": turn.request.note})
    step.messages = messages
    step.estimated_tokens = window.estimate(turn.fixed_tokens)


def must_compact(turn: TurnState) -> bool:
    """Whether the history is over the hard mark: the prompt is built only after a summary."""
    services = turn.services
    estimate = turn.window.estimate(turn.fixed_tokens)
    return services.compactor is not None and services.policy.pressure(estimate) == "hard"


async def stream_model_call(turn: TurnState, step: Step) -> AsyncIterator[ev.TurnEvent]:
    """Stream the model's answer as it comes. A provider that finds the prompt too long before anything was
    streamed gets one retry of the step, after a forced compaction (or, failing that, a tighter trim)."""
    model = turn.services.llm
    step.stage = "model"
    started, first_token = time.time(), None
    try:
        ahead = turn.request.ahead if step.index == 0 else None
        async for event in model.stream(step.messages, turn.tools.schemas(), ahead=ahead):
            if isinstance(event, llm.TextChunk):
                first_token = first_token or time.time()
                step.text.append(event.text)
                yield ev.TextDelta(event.text)
            elif isinstance(event, llm.ReasoningChunk):
                first_token = first_token or time.time()
                step.reasoning.append(event.text)
                yield ev.ReasoningDelta(event.text)
            elif isinstance(event, llm.ToolArgumentsDelta):
                yield ev.ToolInputDelta(event.id, event.text)
            elif isinstance(event, llm.ToolCallHeader):
                yield ev.ToolCallStarted(event.id, event.name)
            else:
                step.completed = event
    except ModelError as e:
        turn.telemetry.generation(_generation(model.model, started, first_token, step, e.message))
        if e.provider_code == "context_length_exceeded" and turn.squeeze == 1.0 and not step.text:
            step.stage = "prompt"
            turn.squeeze = 0.5
            yield ev.StepFinished()
            if turn.services.compactor is not None:
                async for status in _compact(turn, keep_tokens=turn.services.policy.keep_tokens // 2):
                    yield status
            raise RetryStep from e
        step.stage = "saving"
        await save(turn, step, _assistant(turn, step, []))
        raise TurnFailure(e.message, e.provider_code or "model_error") from e
    assert step.completed is not None
    turn.telemetry.generation(_generation(model.model, started, first_token, step, None))
    if step.completed.usage is not None:
        turn.usage.add(step.completed.usage)
        turn.services.policy.calibration.observe(step.estimated_tokens, step.completed.usage.prompt_tokens)


async def settle_step(turn: TurnState, step: Step) -> AsyncIterator[ev.TurnEvent]:
    """Accept the step's tool calls, or, when one has arguments that are not a JSON object, close them all and
    retry the step (a bounded number of times per turn). Nothing of a refused attempt is stored."""
    step.stage = "settle"
    calls = step.calls
    if all(c.arguments is not None for c in calls):
        return
    for c in calls:
        if c.arguments is None:
            yield ev.ToolInputFailed(c.id, c.name, c.arguments_json, c.parse_error or "invalid arguments")
        else:
            yield ev.ToolCallReady(c.id, c.name, c.arguments)
            yield ev.ToolFinished(c.id, False, None, "not run: another call of this step was invalid")
    yield ev.StepFinished()
    if turn.json_retries >= turn.services.limits.invalid_tool_json_retries:
        raise TurnFailure(INVALID_ARGUMENTS_TEXT, "invalid_tool_arguments")
    turn.json_retries += 1
    log.warning("turn %s: invalid tool arguments, retrying the step", turn.request.turn_id)
    raise RetryStep


async def run_tools(turn: TurnState, step: Step) -> AsyncIterator[ev.TurnEvent]:
    """Run the step's calls concurrently and stream each result as it finishes. Long-running tools only start an
    operation here; their work runs after the step is stored. Calls that wait for a person (a frontend tool,
    `ask_user`, a tool needing approval) do not run: they are stored waiting and the turn ends after the step."""
    calls = step.calls
    if not calls:
        return
    for c in calls:
        yield ev.ToolCallReady(c.id, c.name, c.arguments or {})
    step.stage = "tools"
    for c in calls:
        kind = turn.tools.awaiting(c.name)
        if kind is None:
            continue
        if turn.services.awaiting is None:
            step.outcomes[c.id] = _CANNOT_WAIT
            yield ev.ToolFinished(c.id, False, _CANNOT_WAIT.output, _CANNOT_WAIT.error_text)
            continue
        step.awaiting[c.id] = kind
        yield ev.ToolAwaiting(c.id, c.name, kind, c.arguments or {})
    now = [c for c in calls if c.id not in step.awaiting and c.id not in step.outcomes]
    async for call, outcome in _run_concurrently(turn, now, step.launched):
        step.outcomes[call.id] = outcome
        turn.telemetry.tool(
            name=call.name, call_id=call.id, ok=outcome.ok, duration_ms=outcome.duration_ms, error=outcome.error_text
        )
        yield ev.ToolFinished(call.id, outcome.ok, outcome.output, outcome.error_text)


async def save_step(turn: TurnState, step: Step) -> AsyncIterator[ev.TurnEvent]:
    """Store the step's assistant message and tool results in one append, with its usage; then start the work of
    the operations it launched. A step Postgres did not take is kept (`KEPT`). The append of the turn's last step
    also frees the session's active turn: the turn writes nothing after it."""
    assert step.completed is not None
    step.stage = "saving"
    calls = step.calls
    tool_messages = _tool_messages(turn, calls, step.outcomes, step.launched, step.awaiting)
    stored = await save(
        turn, step, _assistant(turn, step, calls), *tool_messages, usage=step.completed.usage, last=step.is_last
    )
    for operation in step.launched.values():
        if operation.launch is not None:
            # Only now: its result must find the pending message stored (or kept: the result's update stores the
            # session's kept writes first).
            operation.launch()
    step.stage = "saved"
    if stored is None:
        step.kept = True
        yield KEPT
        return
    turn.window.extend(stored)


def count_tool_round(turn: TurnState, step: Step) -> None:
    """After a step whose tools ran: end the turn if its history is not stored (the next model call would not
    see it) or if the turn has used its tool rounds."""
    if step.kept:
        raise TurnFailure(STOPPED_UNSTORED_TEXT, "storage_unavailable")
    turn.tool_rounds += 1
    if turn.tool_rounds >= turn.services.limits.max_tool_rounds:
        rounds = turn.services.limits.max_tool_rounds
        raise TurnFailure(f"Stopped after {rounds} tool rounds in one turn.", "tool_round_limit")


def compact_later(turn: TurnState) -> None:
    """After the reply: summarise in the background when the history nears the budget, so the next turn does not
    wait for it."""
    compactor, policy, window = turn.services.compactor, turn.services.policy, turn.window
    if compactor is not None and policy.pressure(window.estimate(turn.fixed_tokens), len(window.live)) != "ok":
        compactor.schedule(
            turn.request.session_id, keep_tokens=policy.keep_tokens, keep_messages=policy.budget.keep_messages
        )


async def save_interrupted(turn: TurnState, step: Step) -> None:
    """Store what a cancelled step produced, marked interrupted: its text while the model streamed; its text, the
    calls that finished and their results while its tools ran. Nothing before the model call, nothing for a
    refused attempt, and nothing while the step is being saved (`append_or_keep` keeps it on a cancellation)."""
    if step.stage == "model":
        work = save(turn, step, _assistant(turn, step, [], interrupted=True), patient=False)
    elif step.stage == "tools":
        assert step.completed is not None
        done = [c for c in step.calls if c.id in step.outcomes]
        partial = [_assistant(turn, step, done, interrupted=True), *_tool_messages(turn, done, step.outcomes)]
        work = save(turn, step, *partial, usage=step.completed.usage, patient=False)
    else:
        return
    try:
        await asyncio.shield(work)
    except Exception:
        log.exception("could not store the partial reply of a cancelled turn")


async def save(
    turn: TurnState,
    step: Step,
    *messages: dict[str, Any] | None,
    usage: llm.Usage | None = None,
    patient: bool = True,
    last: bool = False,
) -> list[ChatMessage] | None:
    """Store the step's messages; None when Postgres did not take them and they are kept for later. `patient`:
    retry for `store_retry_seconds` first (a turn being cancelled keeps them at once instead). `last`: the turn's
    last write: it also frees the session's active turn (`step.freed_session` once it did), and the cache learns of
    the messages in the end's round trip (`TurnRequest.end_work`)."""
    services = turn.services
    present = [m for m in messages if m is not None]
    rows = [_new_message(turn, m, step_key(turn.request.turn_id, step.index, i)) for i, m in enumerate(present)]
    if not rows and usage is None and not last:
        return []
    result = None
    try:
        result = await services.store.append_or_keep(
            turn.request.session_id,
            rows,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            retry_seconds=services.limits.store_retry_seconds if patient else 0.0,
            release=turn.request.turn_id if last else None,
            no_pending=turn.no_pending_writes,
            cache_later=turn.request.end_work if last else None,
        )
    finally:
        if result is None:  # kept for later (or possibly, if cancelled meanwhile): the next append asks Redis
            turn.no_pending_writes = False
    if result is None:
        return None
    step.freed_session = last
    return result.messages


async def _compact(turn: TurnState, *, keep_tokens: int) -> AsyncIterator[ev.TurnEvent]:
    assert turn.services.compactor is not None
    yield ev.Status("compaction", {"state": "running"})
    await turn.window.compact(turn.services.compactor, turn.services.store, keep_tokens=keep_tokens)
    yield ev.Status("compaction", {"state": "done"})


async def _run_concurrently(
    turn: TurnState, calls: Sequence[llm.ToolCall], started: dict[str, Started]
) -> AsyncIterator[tuple[llm.ToolCall, ToolOutcome]]:
    request, services = turn.request, turn.services

    async def call_one(c: llm.ToolCall) -> ToolOutcome:
        tool = turn.tools.get(c.name)
        ctx = ToolContext(
            user_id=request.user_id,
            session_id=request.session_id,
            tool_call_id=c.id,
            is_authenticated=request.is_authenticated,
        )
        if tool is not None and tool.is_long_running and services.operations is not None:
            if tool.requires_auth and not request.is_authenticated:
                return await run_tool(tool, c.name, c.arguments or {}, ctx)  # the same refusal as any tool
            started[c.id] = await services.operations.start(tool, c.arguments or {}, ctx)
            return started[c.id].outcome
        return await run_tool(tool, c.name, c.arguments or {}, ctx)

    tasks = {asyncio.create_task(call_one(c)): c for c in calls}
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in sorted(done, key=lambda t: calls.index(tasks[t])):
                yield tasks[task], task.result()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _tool_messages(
    turn: TurnState,
    calls: Sequence[llm.ToolCall],
    outcomes: Mapping[str, ToolOutcome],
    started: Mapping[str, Started] | None = None,
    awaiting: Mapping[str, AwaitingKind] | None = None,
) -> list[dict[str, Any]]:
    """Tool results as stored messages, in call order; an oversized output is cut in the middle (head and tail
    kept). A call that waits for a person gets its placeholder, which reads "not answered" until an answer
    replaces it."""
    cap, counter = turn.services.limits.max_tool_output_tokens, turn.services.counter
    messages = []
    for c in calls:
        if awaiting and c.id in awaiting:
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": c.id,
                    "content": NOT_ANSWERED,
                    "name": c.name,
                    "awaiting": awaiting[c.id],
                }
            )
            continue
        if c.id not in outcomes:
            continue
        operation = (started or {}).get(c.id)
        text = operation.stored if operation is not None else _as_text(outcomes[c.id].output)
        if len(text) > cap and counter.count_text(text) > cap:  # a token is at least one character
            text = truncate_middle(text, cap, counter)
        messages.append({"role": "tool", "tool_call_id": c.id, "content": text})
    return messages


def _new_message(turn: TurnState, message: dict[str, Any], write_key: str) -> NewMessage:
    return NewMessage(
        role=message["role"],
        content=message.get("content"),
        tool_calls=message.get("tool_calls"),
        tool_call_id=message.get("tool_call_id"),
        token_count=turn.services.counter.count_message({**message, "name": None}),  # a tool's name is not sent
        reasoning=message.get("reasoning"),
        model=message.get("model"),
        usage=message.get("usage"),
        write_key=write_key,
        name=message.get("name"),
        awaiting=message.get("awaiting"),
    )


def _generation(model: str, started: float, first_token: float | None, step: Step, error: str | None) -> Generation:
    done = step.completed
    return Generation(
        model=model,
        started_at=started,
        ended_at=time.time(),
        first_token_at=first_token,
        prompt_tokens=done.usage.prompt_tokens if done and done.usage else None,
        completion_tokens=done.usage.completion_tokens if done and done.usage else None,
        finish_reason=done.finish_reason if done else None,
        error=error,
        input_messages=step.messages,
        output_text=step.content,
    )


def _assistant(
    turn: TurnState, step: Step, calls: Sequence[llm.ToolCall], *, interrupted: bool = False
) -> dict[str, Any] | None:
    """The step's assistant message to store, with its reasoning, model and usage; None when the model said
    nothing at all. Only `role`, `content` and `tool_calls` are counted as tokens and reach the model again."""
    content, reasoning = step.content, step.reasoning_text
    if interrupted:
        content = _interrupted(content)
    if not content and not calls and not reasoning:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json or "{}"}}
            for c in calls
        ]
    extras = {"reasoning": reasoning, "model": turn.services.llm.model, "usage": _usage_of(step)}
    return {**message, **{k: v for k, v in extras.items() if v is not None}}


def _usage_of(step: Step) -> dict[str, int] | None:
    usage = step.completed.usage if step.completed is not None else None
    if usage is None:
        return None
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
    }


def _as_text(output: Any) -> str:
    return output if isinstance(output, str) else orjson.dumps(output, default=str).decode()


def _interrupted(content: str) -> str:
    return f"{content}\n\n{INTERRUPTED_MARK}" if content else INTERRUPTED_MARK
