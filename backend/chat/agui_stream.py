"""A turn as AG-UI events: the second wire protocol, read from the same turn stream as the AI SDK one.

A turn's Redis Stream holds its events once, in their AI SDK encoding (`ui_stream.py` writes them; every pod and
every replay reads them). This translator reads those chunks and emits AG-UI 1.0 events (`ag-ui-protocol`'s
models), so an AG-UI client follows, resumes and replays a turn from any pod with the same cursors and no second
stream (docs/architecture.md, "Two wire protocols"). The chunks already carry every turn event in order, with
its parts opened and closed (`UIStreamTranslator` guarantees that), so the mapping is one chunk to a few events:

- a step (`start-step` / `finish-step`) is `STEP_STARTED` / `STEP_FINISHED` named `step-<n>`;
- the text, reasoning and tool calls of a step belong to one assistant message, `<reply id>-<k>` (the k-th step
  of the reply that produced anything), the id `agui_messages.py` gives the stored step;
- a tool call is `TOOL_CALL_START` / `ARGS` / `END` once its input is complete, then `TOOL_CALL_RESULT` (an error
  result when the tool failed, never ran or was denied). In AG-UI a call left without a result is one the client
  must answer: the chunks close every call that gets no result except those that wait for a person (a question,
  a frontend tool: human in the loop), which `RUN_FINISHED` lists as pending (the client answers them with tool
  messages in its next run);
- an approval request is a `CUSTOM` event `tool-approval-request` when it comes, and an interrupt of the run:
  `RUN_FINISHED`'s outcome is then `interrupt`, one `Interrupt` per call to approve (`approval_interrupt`), which
  the next run answers with `resume`;
- `error` is `RUN_ERROR`; `finish` is `RUN_FINISHED` with the turn's usage, its outcome `cancelled` after `abort`;
- a transient `data-<name>` part is a `CUSTOM` event `<name>`.

A client that resumes after a cursor gets a fresh `RUN_STARTED` (its event verifier starts over), then `reopen()`
re-opens what was open at the cursor (same ids, so its messages continue in place), then the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from ag_ui.core import (
    BaseEvent,
    CustomEvent,
    Interrupt,
    ReasoningEndEvent,
    ReasoningMessageContentEvent,
    ReasoningMessageEndEvent,
    ReasoningMessageStartEvent,
    ReasoningStartEvent,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    StepFinishedEvent,
    StepStartedEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)

DENIED_TEXT = "The user denied this call; it did not run."
LOST_END_TEXT = "The run's stream ended before the run did; load the thread's messages to see what was stored."


def step_message_id(reply_id: str, index: int) -> str:
    """Id of the assistant message of the `index`-th step (from 0) of a reply that produced anything."""
    return f"{reply_id}-{index}"


def reasoning_message_id(step_message: str, index: int) -> str:
    return f"{step_message}-reasoning-{index}"


def result_message_id(tool_call_id: str) -> str:
    """Id of the tool message holding a call's result."""
    return f"result-{tool_call_id}"


APPROVAL_REASON = "tool_approval"
"""The `reason` of an interrupt that asks to approve a tool call."""
APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["approved"],
}
"""What a `resume` entry's `payload` answering an approval holds."""


def approval_interrupt(approval_id: str, tool_call_id: str, tool_name: str | None) -> Interrupt:
    """The interrupt of a call that waits for approval; its id is the call's approval id (as useChat knows it)."""
    what = f"the call of {tool_name}" if tool_name else "this tool call"
    return Interrupt(
        id=approval_id,
        reason=APPROVAL_REASON,
        message=f"Approve {what}?",
        tool_call_id=tool_call_id,
        response_schema=APPROVAL_SCHEMA,
    )


def error_content(error_text: str) -> str:
    """A failed call's result as the model is shown it (the stored tool message's shape)."""
    return json.dumps({"error": {"message": error_text}})


class _Call:
    __slots__ = ("args_sent", "ended", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.args_sent = False
        self.ended = False


class AguiTranslator:
    def __init__(
        self,
        *,
        thread_id: str,
        run_id: str,
        outcomes: bool = True,
        client_results: Iterable[str] = (),
        first_step: int = 0,
    ) -> None:
        """`first_step`: how many steps of the reply came before this turn (a continuation goes on with the
        message of the one that asked, so its steps' messages go on counting: `<reply id>-<first_step>` next).
        `client_results`: calls whose results the client sent in this run's tool messages (it holds them; a
        `TOOL_CALL_RESULT` would add a second tool message for the call).
        `outcomes`: the client knows every `RUN_FINISHED` outcome (AG-UI 1.0, which sends `protocolVersion`).
        The 0.0.x clients (what `@copilotkit/runtime` 1.75 runs) refuse an outcome other than `success` and
        `interrupt`, and `pendingToolCallIds` in it: for them a cancelled run finishes without an outcome and with
        `result: {"cancelled": true}`, and pending calls are not named."""
        self.thread_id = thread_id
        self.run_id = run_id
        self._outcomes = outcomes
        self._reply_id = f"run-{run_id}"
        """The `start` chunk's message id names the reply; this stands in until it is read."""
        self._steps = 0
        self._step: str | None = None
        """Name of the open step."""
        self._messages = first_step
        """Steps of the reply so far that produced anything (each has an assistant message)."""
        self._message: str | None = None
        """The open step's assistant message, once it produced anything."""
        self._reasonings = 0
        self._text: str | None = None
        self._reasoning: str | None = None
        self._calls: dict[str, _Call] = {}
        """Calls the client has seen and whose result it has not."""
        self._answered: set[str] = set(client_results)
        """Calls whose result was sent or that the client holds (a result is sent once)."""
        self._interrupts: dict[str, Interrupt] = {}
        """Approvals asked for, by call."""
        self._cancelled = False
        self.finished = False

    def started(self) -> RunStartedEvent:
        return RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id)

    def translate(self, chunk: dict[str, Any]) -> list[BaseEvent]:
        """The AG-UI events of one AI SDK chunk (as stored, parsed JSON)."""
        if self.finished:
            return []
        kind = chunk.get("type")
        match kind:
            case "text-delta":
                delta = chunk.get("delta") or ""
                if not delta:
                    return []
                out = [] if self._text is not None else self._open_text()
                assert self._text is not None
                return [*out, TextMessageContentEvent(message_id=self._text, delta=delta)]
            case "text-start":
                return self._open_text()
            case "text-end":
                return self._end_text()
            case "reasoning-start":
                return self._open_reasoning()
            case "reasoning-delta":
                delta = chunk.get("delta") or ""
                if not delta:
                    return []
                out = [] if self._reasoning is not None else self._open_reasoning()
                assert self._reasoning is not None
                return [*out, ReasoningMessageContentEvent(message_id=self._reasoning, delta=delta)]
            case "reasoning-end":
                return self._end_reasoning()
            case "tool-input-start":
                return self._start_call(chunk["toolCallId"], chunk["toolName"])
            case "tool-input-delta":
                call = self._calls.get(chunk["toolCallId"])
                delta = chunk.get("inputTextDelta") or ""
                if call is None or call.ended or not delta:
                    return []
                call.args_sent = True
                return [ToolCallArgsEvent(tool_call_id=chunk["toolCallId"], delta=delta)]
            case "tool-input-available":
                return self._end_call(chunk["toolCallId"], chunk["toolName"], json.dumps(chunk.get("input")))
            case "tool-input-error":
                raw = chunk.get("input")
                call_id = chunk["toolCallId"]
                out = self._end_call(call_id, chunk["toolName"], raw if isinstance(raw, str) else json.dumps(raw))
                return [*out, *self._result(call_id, error_content(chunk.get("errorText") or "invalid input"))]
            case "tool-output-available":
                return self._result(chunk["toolCallId"], json.dumps(chunk.get("output")))
            case "tool-output-error":
                call_id = chunk["toolCallId"]
                return self._result(call_id, error_content(chunk.get("errorText") or "the tool failed"))
            case "tool-output-denied":
                return self._result(chunk["toolCallId"], error_content(DENIED_TEXT))
            case "tool-approval-request":
                call_id, approval_id = str(chunk.get("toolCallId")), str(chunk.get("approvalId"))
                call = self._calls.get(call_id)
                self._interrupts[call_id] = approval_interrupt(approval_id, call_id, call.name if call else None)
                value = {"approvalId": approval_id, "toolCallId": call_id}
                return [CustomEvent(name="tool-approval-request", value=value)]
            case "start-step":
                out = self._end_step()
                self._steps += 1
                self._step = f"step-{self._steps}"
                return [*out, StepStartedEvent(step_name=self._step)]
            case "finish-step":
                return self._end_step()
            case "start":
                self._reply_id = str(chunk.get("messageId") or self._reply_id)
                return []
            case "abort":
                self._cancelled = True
                return []
            case "error":
                self.finished = True
                return [RunErrorEvent(message=str(chunk.get("errorText") or "the run failed"))]
            case "finish":
                return self._finish(chunk.get("messageMetadata"))
            case str() if kind.startswith("data-"):
                return [CustomEvent(name=kind.removeprefix("data-"), value=chunk.get("data"))]
        return []

    def reopen(self) -> list[BaseEvent]:
        """Events that re-open, under their ids, what is open now: for a client that resumes here."""
        if self.finished:
            return []
        out: list[BaseEvent] = []
        if self._step is not None:
            out.append(StepStartedEvent(step_name=self._step))
        if self._text is not None:
            out.append(TextMessageStartEvent(message_id=self._text, role="assistant"))
        if self._reasoning is not None:
            out += [
                ReasoningStartEvent(message_id=self._reasoning),
                ReasoningMessageStartEvent(message_id=self._reasoning),
            ]
        for call_id, call in self._calls.items():
            if not call.ended:
                out.append(
                    ToolCallStartEvent(tool_call_id=call_id, tool_call_name=call.name, parent_message_id=self._message)
                )
        return out

    def close(self) -> list[BaseEvent]:
        """The end of a stream that stopped without one (`RUN_ERROR`); nothing once the run has ended."""
        if self.finished:
            return []
        self.finished = True
        return [RunErrorEvent(message=LOST_END_TEXT, code="stream_lost")]

    def _finish(self, metadata: Any) -> list[BaseEvent]:
        out = self._end_step()
        self.finished = True
        # Calls left without a result wait for a person; the client answers them (AG-UI's pending tool calls, which
        # a 0.0.x client derives itself: its schema refuses the field).
        pending = (list(self._calls) or None) if self._outcomes else None
        outcome: RunFinishedSuccessOutcome | RunFinishedInterruptOutcome | RunFinishedCancelledOutcome | None
        outcome = RunFinishedSuccessOutcome(pending_tool_call_ids=pending)
        # An approval still asked for makes the run an interrupted one (both client versions know that outcome). Its
        # calls to answer with tool messages are then not named: a 1.0 interrupt outcome has no field for them.
        interrupts = [i for call_id, i in self._interrupts.items() if call_id in self._calls]
        if interrupts:
            outcome = RunFinishedInterruptOutcome(interrupts=interrupts)
        result = None
        if self._cancelled:
            outcome, result = (RunFinishedCancelledOutcome(), None) if self._outcomes else (None, {"cancelled": True})
        usage = _usage(metadata)
        finished = RunFinishedEvent(
            thread_id=self.thread_id,
            run_id=self.run_id,
            outcome=outcome,
            result=result,
            usage=[usage] if usage else None,
        )
        return [*out, finished]

    def _step_message(self) -> str:
        if self._message is None:
            self._message = step_message_id(self._reply_id, self._messages)
            self._messages += 1
            self._reasonings = 0
        return self._message

    def _open_text(self) -> list[BaseEvent]:
        out = self._end_parts()
        self._text = self._step_message()
        return [*out, TextMessageStartEvent(message_id=self._text, role="assistant")]

    def _end_text(self) -> list[BaseEvent]:
        if self._text is None:
            return []
        text, self._text = self._text, None
        return [TextMessageEndEvent(message_id=text)]

    def _open_reasoning(self) -> list[BaseEvent]:
        out = self._end_parts()
        self._reasoning = reasoning_message_id(self._step_message(), self._reasonings)
        self._reasonings += 1
        return [
            *out,
            ReasoningStartEvent(message_id=self._reasoning),
            ReasoningMessageStartEvent(message_id=self._reasoning),
        ]

    def _end_reasoning(self) -> list[BaseEvent]:
        if self._reasoning is None:
            return []
        reasoning, self._reasoning = self._reasoning, None
        return [ReasoningMessageEndEvent(message_id=reasoning), ReasoningEndEvent(message_id=reasoning)]

    def _end_parts(self) -> list[BaseEvent]:
        return [*self._end_text(), *self._end_reasoning()]

    def _start_call(self, call_id: str, name: str) -> list[BaseEvent]:
        if call_id in self._calls:
            return []
        out = self._end_parts()
        self._calls[call_id] = _Call(name)
        out.append(
            ToolCallStartEvent(tool_call_id=call_id, tool_call_name=name, parent_message_id=self._step_message())
        )
        return out

    def _end_call(self, call_id: str, name: str, arguments: str) -> list[BaseEvent]:
        """End a call's input (starting it first if its start was not streamed), with its arguments when none
        were streamed."""
        out = self._start_call(call_id, name)
        call = self._calls.get(call_id)
        if call is None or call.ended:
            return out
        if not call.args_sent and arguments:
            out.append(ToolCallArgsEvent(tool_call_id=call_id, delta=arguments))
        call.ended = True
        out.append(ToolCallEndEvent(tool_call_id=call_id))
        return out

    def _result(self, call_id: str, content: str) -> list[BaseEvent]:
        """A call's result. A call this stream did not show is one an earlier run left waiting (for a person):
        its result is a message of its own, placed after its call by the client."""
        if call_id in self._answered:
            return []
        self._answered.add(call_id)
        call = self._calls.pop(call_id, None)
        out: list[BaseEvent] = []
        if call is not None and not call.ended:  # its arguments were cut off
            out.append(ToolCallEndEvent(tool_call_id=call_id))
        out.append(
            ToolCallResultEvent(
                message_id=result_message_id(call_id), tool_call_id=call_id, content=content, role="tool"
            )
        )
        return out

    def _end_step(self) -> list[BaseEvent]:
        # Calls still without a result stay open: the chunks close every call that will not get one (an error
        # output, a `tool-input-error`), so what is left waits for a person (a question, an approval).
        out = self._end_parts()
        if self._step is not None:
            out.append(StepFinishedEvent(step_name=self._step))
            self._step = None
        self._message = None
        return out


def _usage(metadata: Any) -> TokenUsage | None:
    """The `finish` chunk's usage (`backend/chat/usage.py`) as AG-UI's token usage."""
    if not isinstance(metadata, dict) or not isinstance(metadata.get("usage"), dict):
        return None
    usage = metadata["usage"]
    return TokenUsage(
        model=metadata.get("model"),
        input_tokens=usage.get("promptTokens"),
        output_tokens=usage.get("completionTokens"),
        total_tokens=usage.get("totalTokens"),
        reasoning_tokens=usage.get("reasoningTokens"),
        cached_input_tokens=usage.get("cachedTokens"),
    )
