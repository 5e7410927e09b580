"""Translate turn events into AI SDK UI message stream chunks, keeping the order the `ai` client enforces.

The translator owns the bookkeeping of open parts: a text part is ended before a tool call or `finish-step`
(v5/v6 clients forget open text parts at `finish-step`), tool outputs are only sent for calls the client has
seen, and `close()` ends whatever is still open so every message gets exactly one `finish`. No tool call is left
open either: when a step or the message ends early (the model's stream cut, the turn cancelled or failed), a call
whose arguments were still streaming gets `tool-input-error` with the raw text received so far, and a call whose
tool had not answered gets `tool-output-error`; a call with unusable arguments gets `tool-input-error` at once.
"""

from __future__ import annotations

from itertools import count
from typing import Any

from backend.chat import events as ev
from backend.chat import protocol as p
from backend.chat.error_codes import error_part
from backend.chat.open_parts import CUT_INPUT_TEXT, NO_OUTPUT_TEXT

# Finish reasons the v5-v7 clients all accept; anything else the model reports becomes "other".
_FINISH_REASONS: dict[str, p.FinishReason] = {
    "stop": "stop",
    "length": "length",
    "content_filter": "content-filter",
    "tool_calls": "tool-calls",
    "error": "error",
    "other": "other",
    "content-filter": "content-filter",
    "tool-calls": "tool-calls",
}


class UIStreamTranslator:
    def __init__(self, *, approval_chunks: bool = True) -> None:
        """`approval_chunks`: approval requests as `tool-approval-request` and denials as `tool-output-denied`
        (ai 6 and 7); False (ai 5, which has neither chunk) sends a `data-tool-approval-request` part and a
        denial as `tool-output-error` instead."""
        self._approval_chunks = approval_chunks
        self._text_id: str | None = None
        self._text_ids = count()
        self._reasoning_id: str | None = None
        self._reasoning_ids = count()
        self._step_open = False
        self._inputs: dict[str, tuple[str, list[str]]] = {}
        """Calls whose arguments are streaming: tool name and the raw argument text so far."""
        self._running: dict[str, str] = {}
        """Calls whose input the client has and whose output it has not (call id → tool name)."""
        self.finished = False

    def translate(self, event: ev.TurnEvent) -> list[p.Chunk]:
        if self.finished:
            return []
        match event:
            case ev.TextDelta(text=text):
                if not text:
                    return []
                # The per-token path: a reasoning part to end is rare, so it costs one check.
                out: list[p.Chunk] = [] if self._reasoning_id is None else self._end_reasoning()
                if self._text_id is None:
                    self._text_id = f"text-{next(self._text_ids)}"
                    out.append(p.TextStart(id=self._text_id))
                out.append(p.TextDelta(id=self._text_id, delta=text))
                return out
            case ev.ReasoningDelta(text=text):
                if not text:
                    return []
                out = self._end_text()
                if self._reasoning_id is None:
                    self._reasoning_id = f"reasoning-{next(self._reasoning_ids)}"
                    out.append(p.ReasoningStart(id=self._reasoning_id))
                out.append(p.ReasoningDelta(id=self._reasoning_id, delta=text))
                return out
            case ev.ToolCallStarted(call_id=call_id, name=name):
                self._inputs[call_id] = (name, [])
                return [*self._end_parts(), p.ToolInputStart(tool_call_id=call_id, tool_name=name)]
            case ev.ToolInputDelta(call_id=call_id, text=text):
                if call_id not in self._inputs or not text:
                    return []
                self._inputs[call_id][1].append(text)
                return [p.ToolInputDelta(tool_call_id=call_id, input_text_delta=text)]
            case ev.ToolCallReady(call_id=call_id, name=name, arguments=arguments):
                self._inputs.pop(call_id, None)
                self._running[call_id] = name
                return [*self._end_parts(), p.ToolInputAvailable(tool_call_id=call_id, tool_name=name, input=arguments)]
            case ev.ToolInputFailed(call_id=call_id, name=name, raw_arguments=raw, error_text=error_text):
                self._inputs.pop(call_id, None)
                self._running.pop(call_id, None)
                failed = p.ToolInputError(tool_call_id=call_id, tool_name=name, input=raw, error_text=error_text)
                return [*self._end_parts(), failed]
            case ev.ToolFinished(call_id=call_id, ok=ok, output=output, error_text=error_text):
                if call_id not in self._running and call_id not in self._inputs:
                    return []  # a call the client never saw, or one already closed
                self._inputs.pop(call_id, None)
                self._running.pop(call_id, None)
                if ok:
                    return [p.ToolOutputAvailable(tool_call_id=call_id, output=output)]
                return [p.ToolOutputError(tool_call_id=call_id, error_text=error_text or "tool failed")]
            case ev.ToolAwaiting(call_id=call_id, name=name, kind=kind, arguments=arguments):
                # Not closed at the step's end: it stays open in the client until its answer comes.
                self._running.pop(call_id, None)
                if kind != "approval":
                    return []
                approval_id = approval_id_of(call_id)
                if self._approval_chunks:
                    return [p.ToolApprovalRequest(approval_id=approval_id, tool_call_id=call_id)]
                data = approval_request_data(call_id, name, arguments)
                return [p.DataPart(type="data-tool-approval-request", id=approval_id, data=data)]
            case ev.ToolAnswered(call_id=call_id, ok=ok, output=output, error_text=error_text):
                if ok:
                    return [*self._end_parts(), p.ToolOutputAvailable(tool_call_id=call_id, output=output)]
                return [*self._end_parts(), p.ToolOutputError(tool_call_id=call_id, error_text=error_text or "failed")]
            case ev.ToolDenied(call_id=call_id, text=text):
                if self._approval_chunks:
                    return [*self._end_parts(), p.ToolOutputDenied(tool_call_id=call_id)]
                # ai 5 has no `tool-output-denied` (its parser rejects the chunk): the denial is the call's error.
                return [*self._end_parts(), p.ToolOutputError(tool_call_id=call_id, error_text=text)]
            case ev.StepStarted():
                out = self._end_step()
                self._step_open = True
                return [*out, p.StartStep()]
            case ev.StepFinished():
                return self._end_step()
            case ev.TurnStarted(message_id=message_id, metadata=metadata):
                return [p.Start(message_id=message_id, message_metadata=metadata or None)]
            case ev.Status(name=name, data=data):
                return [p.DataPart(type=f"data-{name}", data=data, transient=True)]
            case ev.TurnFailed(error_text=error_text, code=code):
                return [*self._end_step(), error_part(code), p.Error(error_text=error_text)]
            case ev.TurnAborted(reason=reason):
                return [*self._end_step(), p.Abort(reason=reason)]
            case ev.TurnEnded(finish_reason=reason, metadata=metadata):
                return self.close(reason, metadata)
        return []

    def close(self, finish_reason: str = "other", metadata: dict[str, Any] | None = None) -> list[p.Chunk]:
        """End open parts and the message. Idempotent: only the first call emits `finish`."""
        if self.finished:
            return []
        out = self._end_step()
        self.finished = True
        reason = _FINISH_REASONS.get(finish_reason, "other")
        out.append(p.Finish(finish_reason=reason, message_metadata=metadata))
        return out

    def _end_parts(self) -> list[p.Chunk]:
        """End the open text or reasoning part (at most one is open)."""
        return [*self._end_text(), *self._end_reasoning()]

    def _end_text(self) -> list[p.Chunk]:
        if self._text_id is None:
            return []
        text_id, self._text_id = self._text_id, None
        return [p.TextEnd(id=text_id)]

    def _end_reasoning(self) -> list[p.Chunk]:
        if self._reasoning_id is None:
            return []
        reasoning_id, self._reasoning_id = self._reasoning_id, None
        return [p.ReasoningEnd(id=reasoning_id)]

    def _close_tools(self) -> list[p.Chunk]:
        """Close the calls still open: cut-off arguments as `tool-input-error`, unanswered ones as an output error."""
        out: list[p.Chunk] = [
            p.ToolInputError(tool_call_id=call_id, tool_name=name, input="".join(raw), error_text=CUT_INPUT_TEXT)
            for call_id, (name, raw) in self._inputs.items()
        ]
        out += [p.ToolOutputError(tool_call_id=call_id, error_text=NO_OUTPUT_TEXT) for call_id in self._running]
        self._inputs, self._running = {}, {}
        return out

    def _end_step(self) -> list[p.Chunk]:
        out = [*self._end_parts(), *self._close_tools()]
        if self._step_open:
            self._step_open = False
            out.append(p.FinishStep())
        return out


def approval_request_data(call_id: str, name: str, arguments: Any) -> dict[str, Any]:
    """The `data` of ai 5's `data-tool-approval-request` part (ai 5 has no approval chunk); the client keeps the part
    in the message, so the history (`ui_messages_render.py`) shows it too."""
    return {"approvalId": approval_id_of(call_id), "toolCallId": call_id, "toolName": name, "input": arguments}


def approval_id_of(call_id: str) -> str:
    """The approval id of a call that needs approval: derived from the call, so every pod and every replay agree
    and nothing more is stored."""
    return f"approval-{call_id}"
