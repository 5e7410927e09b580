"""One turn of a conversation: call the model, run the tools it asks for, call it again, until it is done.

`TurnEngine.run` is an async generator of turn events. Reading it top to bottom is the data path of a turn:
history → prompt → model stream → tools (concurrently) → store the step → next step. Every step's assistant
message and tool results are stored in one append when the step ends; a turn that is cancelled or times out
stores what it had, marked interrupted, before the cancellation goes on.

A step's messages carry write keys (`<turn id>:<step>:<index>`), so storing a step again (a retry whose first
attempt committed, a copy kept in Redis, a dead owner's partial reply stored by another pod) writes nothing twice.
While Postgres does not answer a step is retried within the turn, then kept in Redis for later (`append_or_keep`);
the turn then ends after that step, since the next model call would read a history that is not stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import orjson

from backend.chat import events as ev
from backend.chat.compaction import Compactor
from backend.chat.llm import Completed, LLMClient, TextChunk, ToolArgumentsDelta, ToolCall, ToolCallStarted, Usage
from backend.chat.operations import OperationRunner, Started
from backend.chat.prompt import SystemPrompt
from backend.chat.tokens import TokenCounter, truncate_middle
from backend.chat.window import ContextPolicy, ContextWindow
from backend.errors import ModelError
from backend.observability.telemetry import Generation, NullTelemetry, TurnFacts, TurnTelemetry
from backend.store.models import ChatMessage, ChatSession, NewMessage
from backend.store.sessions import SessionStore
from backend.tools.base import ToolContext, ToolOutcome, run_tool
from backend.tools.registry import ToolRegistry

log = logging.getLogger("copilot.turn")

INTERRUPTED_MARK = "[interrupted]"


@dataclass(frozen=True, slots=True)
class TurnRequest:
    turn_id: str
    """Task id of the turn: the id a client reconnects with."""
    session_id: UUID
    user_id: str
    is_authenticated: bool
    page_context: Mapping[str, Any] | None = None
    """What the panel knows about the page (`url`, `content`); shown to the model for this turn only."""
    note: str | None = None
    """A turn without a new user message (a continuation) tells the model why it is speaking, after the history;
    never stored."""
    session: ChatSession | None = None
    """The session as the caller read it, if it did (saves a read): only its summary fields are used, and a
    summary is a consistent starting point however recent."""


@dataclass(frozen=True, slots=True)
class TurnLimits:
    max_tool_rounds: int = 10
    invalid_tool_json_retries: int = 1
    max_tool_output_tokens: int = 4000
    store_retry_seconds: float = 15.0
    """How long a step is retried while Postgres does not answer before it is kept in Redis for later."""


@dataclass(slots=True)
class _Step:
    text: list[str] = field(default_factory=list)
    completed: Completed | None = None

    @property
    def content(self) -> str:
        return "".join(self.text)


class TurnEngine:
    def __init__(
        self,
        *,
        store: SessionStore,
        llm: LLMClient,
        tools: ToolRegistry,
        counter: TokenCounter,
        limits: TurnLimits,
        policy: ContextPolicy,
        compactor: Compactor | None = None,
        operations: OperationRunner | None = None,
    ) -> None:
        self._store = store
        self._llm = llm
        self._tools = tools
        self._counter = counter
        self._limits = limits
        self._policy = policy
        self._compactor = compactor
        self._operations = operations

    async def run(
        self, req: TurnRequest, prompt: SystemPrompt, telemetry: TurnTelemetry | None = None
    ) -> AsyncIterator[ev.TurnEvent]:
        telemetry = telemetry or NullTelemetry().turn_started(_NO_FACTS)
        yield ev.TurnStarted(message_id=f"msg-{req.turn_id}", metadata={"taskId": req.turn_id})
        session = req.session or await self._store.get_any(req.session_id)
        assert session is not None
        window = await ContextWindow.load(self._store, session)
        context = _page_context_messages(req.page_context)
        tool_schemas = self._tools.schemas()
        fixed = self._fixed_tokens(prompt, tool_schemas, context)
        json_retries = 0
        squeeze = 1.0  # halved once when the provider says the prompt is too long

        for index in range(self._limits.max_tool_rounds):
            step = _Step()
            yield ev.StepStarted()
            if self._compactor is not None and self._policy.pressure(window.estimate(fixed)) == "hard":
                yield ev.Status("compaction", {"state": "running"})
                await window.compact(self._compactor, self._store, keep_tokens=self._policy.keep_tokens)
                yield ev.Status("compaction", {"state": "done"})
            available = int(self._policy.budget.limit * squeeze / self._policy.calibration.ratio) - fixed
            messages = window.prompt(prompt.text, context, available=available, counter=self._counter)
            if messages is not None and req.note:
                messages.append({"role": "user", "content": req.note})
            if messages is None:
                yield ev.TurnFailed(
                    "This conversation no longer fits the model's context window, even summarised. "
                    "Please start a new session.",
                    "context_too_long",
                )
                yield ev.TurnEnded("error")
                return
            estimated = window.estimate(fixed)
            started, first_token = time.time(), None
            try:
                async for event in self._llm.stream(messages, tool_schemas):
                    if isinstance(event, TextChunk):
                        first_token = first_token or time.time()
                        step.text.append(event.text)
                        yield ev.TextDelta(event.text)
                    elif isinstance(event, ToolArgumentsDelta):
                        yield ev.ToolInputDelta(event.id, event.text)
                    elif isinstance(event, ToolCallStarted):
                        yield ev.ToolCallStarted(event.id, event.name)
                    else:
                        step.completed = event
            except ModelError as e:
                telemetry.generation(_generation(self._llm.model, started, first_token, step, messages, e.message))
                if e.provider_code == "context_length_exceeded" and squeeze == 1.0 and not step.text:
                    # One forced compaction (or, failing that, a tighter trim) and one retry of the step.
                    squeeze = 0.5
                    yield ev.StepFinished()
                    if self._compactor is not None:
                        yield ev.Status("compaction", {"state": "running"})
                        keep = self._policy.keep_tokens // 2
                        await window.compact(self._compactor, self._store, keep_tokens=keep)
                        yield ev.Status("compaction", {"state": "done"})
                    continue
                await self._save(req, index, _assistant(step.content, []))
                yield ev.TurnFailed(e.message, e.provider_code or "model_error")
                yield ev.TurnEnded("error")
                return
            except (asyncio.CancelledError, GeneratorExit):
                await _shielded(self._save(req, index, _assistant(_interrupted(step.content), []), patient=False))
                raise

            assert step.completed is not None
            telemetry.generation(_generation(self._llm.model, started, first_token, step, messages, None))
            if step.completed.usage is not None:
                self._policy.calibration.observe(estimated, step.completed.usage.prompt_tokens)
            calls = step.completed.tool_calls
            broken = [c for c in calls if c.arguments is None]
            if broken:
                # Nothing of this attempt is stored; the model gets another try at the step.
                for c in calls:
                    if c.arguments is None:
                        yield ev.ToolInputFailed(c.id, c.name, c.arguments_json, c.parse_error or "invalid arguments")
                    else:
                        yield ev.ToolCallReady(c.id, c.name, c.arguments)
                        yield ev.ToolFinished(c.id, False, None, "not run: another call of this step was invalid")
                yield ev.StepFinished()
                if json_retries < self._limits.invalid_tool_json_retries:
                    json_retries += 1
                    log.warning("turn %s: invalid tool arguments, retrying the step", req.turn_id)
                    continue
                yield ev.TurnFailed("The model produced invalid tool arguments.", "invalid_tool_arguments")
                yield ev.TurnEnded("error")
                return

            assistant = _assistant(step.content, calls)
            if not calls:
                stored = await self._save(req, index, assistant, usage=step.completed.usage)
                if stored is None:
                    yield _KEPT  # the reply is complete; it is stored once Postgres answers
                    yield ev.StepFinished()
                    yield ev.TurnEnded(step.completed.finish_reason)
                    return
                window.extend(stored)
                yield ev.StepFinished()
                yield ev.TurnEnded(step.completed.finish_reason)
                pressure = self._policy.pressure(window.estimate(fixed), len(window.live))
                if self._compactor is not None and pressure != "ok":
                    self._compactor.schedule(
                        req.session_id,
                        keep_tokens=self._policy.keep_tokens,
                        keep_messages=self._policy.budget.keep_messages,
                    )
                return

            for c in calls:
                yield ev.ToolCallReady(c.id, c.name, c.arguments or {})
            outcomes: dict[str, ToolOutcome] = {}
            try:
                launched: dict[str, Started] = {}
                async for call, outcome in self._run_tools(req, calls, launched):
                    outcomes[call.id] = outcome
                    telemetry.tool(
                        name=call.name,
                        call_id=call.id,
                        ok=outcome.ok,
                        duration_ms=outcome.duration_ms,
                        error=outcome.error_text,
                    )
                    yield ev.ToolFinished(call.id, outcome.ok, outcome.output, outcome.error_text)
            except (asyncio.CancelledError, GeneratorExit):
                done = [c for c in calls if c.id in outcomes]
                partial = [_assistant(_interrupted(step.content), done), *self._tool_messages(done, outcomes)]
                await _shielded(self._save(req, index, *partial, usage=step.completed.usage, patient=False))
                raise
            stored = await self._save(
                req, index, assistant, *self._tool_messages(calls, outcomes, launched), usage=step.completed.usage
            )
            for operation in launched.values():
                if operation.launch is not None:
                    # Only now: its result must find the pending message stored (or kept: the result's update
                    # stores the session's kept writes first).
                    operation.launch()
            if stored is None:
                yield _KEPT
                yield ev.StepFinished()
                yield ev.TurnFailed(_STOPPED_UNSTORED, "storage_unavailable")
                yield ev.TurnEnded("error")
                return
            window.extend(stored)
            yield ev.StepFinished()

        yield ev.TurnFailed(
            f"Stopped after {self._limits.max_tool_rounds} model calls in one turn.", "tool_round_limit"
        )
        yield ev.TurnEnded("error")

    async def _run_tools(
        self, req: TurnRequest, calls: Sequence[ToolCall], started: dict[str, Started]
    ) -> AsyncIterator[tuple[ToolCall, ToolOutcome]]:
        """Run the step's calls concurrently; yield each result as it finishes. Long-running tools only start an
        operation here (recorded in `started`); their work runs after the step is stored."""

        async def call_one(c: ToolCall) -> ToolOutcome:
            tool = self._tools.get(c.name)
            ctx = ToolContext(
                user_id=req.user_id, session_id=req.session_id, tool_call_id=c.id, is_authenticated=req.is_authenticated
            )
            if tool is not None and tool.is_long_running and self._operations is not None:
                if tool.requires_auth and not req.is_authenticated:
                    return await run_tool(tool, c.name, c.arguments or {}, ctx)  # the same refusal as any tool
                started[c.id] = await self._operations.start(tool, c.arguments or {}, ctx)
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

    async def _save(
        self,
        req: TurnRequest,
        step: int,
        *messages: dict[str, Any] | None,
        usage: Usage | None = None,
        patient: bool = True,
    ) -> list[ChatMessage] | None:
        """Store step `step`'s messages; None when Postgres did not take them and they are kept for later.
        `patient`: retry for `store_retry_seconds` first (a turn being cancelled keeps them at once instead)."""
        present = [m for m in messages if m is not None]
        rows = [self._new_message(m, step_key(req.turn_id, step, i)) for i, m in enumerate(present)]
        if not rows and usage is None:
            return []
        result = await self._store.append_or_keep(
            req.session_id,
            rows,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
            retry_seconds=self._limits.store_retry_seconds if patient else 0.0,
        )
        return None if result is None else result.messages

    def _fixed_tokens(
        self, prompt: SystemPrompt, tool_schemas: Sequence[dict[str, Any]], context: Sequence[dict[str, Any]]
    ) -> int:
        """System prompt, tool schemas and per-turn context: counted once per version, not per call."""
        return (
            self._counter.count_cached(prompt.text)
            + self._counter.count_tools(tool_schemas)
            + self._counter.count_messages(context)
        )

    def _tool_messages(
        self,
        calls: Sequence[ToolCall],
        outcomes: Mapping[str, ToolOutcome],
        started: Mapping[str, Started] | None = None,
    ) -> list[dict[str, Any]]:
        """Tool results as stored messages; an oversized output is cut in the middle (head and tail kept)."""
        cap = self._limits.max_tool_output_tokens
        messages = []
        for c in calls:
            if c.id not in outcomes:
                continue
            operation = (started or {}).get(c.id)
            text = operation.stored if operation is not None else _as_text(outcomes[c.id].output)
            if len(text) > cap and self._counter.count_text(text) > cap:  # a token is at least one character
                text = truncate_middle(text, cap, self._counter)
            messages.append({"role": "tool", "tool_call_id": c.id, "content": text})
        return messages

    def _new_message(self, message: dict[str, Any], write_key: str) -> NewMessage:
        return NewMessage(
            role=message["role"],
            content=message.get("content"),
            tool_calls=message.get("tool_calls"),
            tool_call_id=message.get("tool_call_id"),
            token_count=self._counter.count_message(message),
            write_key=write_key,
        )


def step_key(turn_id: str, step: int, index: int) -> str:
    """The write key of the `index`-th message step `step` (counted from 0, like the turn's `start-step` chunks)
    stores: whoever stores that message (the turn, the reconciler, the pod closing a dead owner's turn) uses it."""
    return f"{turn_id}:{step}:{index}"


def _generation(
    model: str,
    started: float,
    first_token: float | None,
    step: _Step,
    messages: Sequence[dict[str, Any]],
    error: str | None,
) -> Generation:
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
        input_messages=messages,
        output_text=step.content,
    )


_NO_FACTS = TurnFacts("", UUID(int=0), "", "", "", "", 0)

_KEPT = ev.Status("storage", {"state": "kept"})
"""Transient: the step's messages wait in Redis for Postgres; they are stored as soon as it answers."""

_STOPPED_UNSTORED = (
    "The reply stopped after its tool calls because the database is unavailable. What it produced is kept and "
    "saved as soon as the database is back; ask again then to continue."
)


def _assistant(content: str, calls: Sequence[ToolCall]) -> dict[str, Any] | None:
    if not content and not calls:
        return None
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments_json or "{}"}}
            for c in calls
        ]
    return message


def _as_text(output: Any) -> str:
    return output if isinstance(output, str) else orjson.dumps(output, default=str).decode()


def _interrupted(content: str) -> str:
    return f"{content}\n\n{INTERRUPTED_MARK}" if content else INTERRUPTED_MARK


def _page_context_messages(page: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    if not page:
        return []
    # Page content comes from the browser: it is context for the model, never part of the system prompt.
    url = page.get("url") or ""
    content = page.get("content") or ""
    return [{"role": "user", "content": f'<page_context url="{url}">\n{content}\n</page_context>'}]


async def _shielded(work: Any) -> None:
    """Finish storing a partial reply even though the turn is being cancelled."""
    try:
        await asyncio.shield(work)
    except Exception:
        log.exception("could not store the partial reply of a cancelled turn")
