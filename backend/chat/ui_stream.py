"""Translate turn events into AI SDK UI message stream chunks, keeping the order the `ai` client enforces.

The translator owns the bookkeeping of open parts: a text part is ended before a tool call or `finish-step`
(v5/v6 clients forget open text parts at `finish-step`), tool outputs are only sent for calls the client has
seen, and `close()` ends whatever is still open so every message gets exactly one `finish`.
"""

from __future__ import annotations

from itertools import count

from backend.chat import events as ev
from backend.chat import protocol as p

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
    def __init__(self) -> None:
        self._text_id: str | None = None
        self._text_ids = count()
        self._step_open = False
        self._known_calls: set[str] = set()
        self.finished = False

    def translate(self, event: ev.TurnEvent) -> list[p.Chunk]:
        if self.finished:
            return []
        match event:
            case ev.TextDelta(text=text):
                if not text:
                    return []
                out: list[p.Chunk] = []
                if self._text_id is None:
                    self._text_id = f"text-{next(self._text_ids)}"
                    out.append(p.TextStart(id=self._text_id))
                out.append(p.TextDelta(id=self._text_id, delta=text))
                return out
            case ev.ToolCallStarted(call_id=call_id, name=name):
                self._known_calls.add(call_id)
                return [*self._end_text(), p.ToolInputStart(tool_call_id=call_id, tool_name=name)]
            case ev.ToolCallReady(call_id=call_id, name=name, arguments=arguments):
                self._known_calls.add(call_id)
                return [*self._end_text(), p.ToolInputAvailable(tool_call_id=call_id, tool_name=name, input=arguments)]
            case ev.ToolFinished(call_id=call_id, ok=ok, output=output, error_text=error_text):
                if call_id not in self._known_calls:
                    return []
                if ok:
                    return [p.ToolOutputAvailable(tool_call_id=call_id, output=output)]
                return [p.ToolOutputError(tool_call_id=call_id, error_text=error_text or "tool failed")]
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
            case ev.TurnFailed(error_text=error_text):
                return [*self._end_step(), p.Error(error_text=error_text)]
            case ev.TurnAborted(reason=reason):
                return [*self._end_step(), p.Abort(reason=reason)]
            case ev.TurnEnded(finish_reason=reason):
                return self.close(reason)
        return []

    def close(self, finish_reason: str = "other") -> list[p.Chunk]:
        """End open parts and the message. Idempotent: only the first call emits `finish`."""
        if self.finished:
            return []
        out = self._end_step()
        self.finished = True
        out.append(p.Finish(finish_reason=_FINISH_REASONS.get(finish_reason, "other")))
        return out

    def _end_text(self) -> list[p.Chunk]:
        if self._text_id is None:
            return []
        text_id, self._text_id = self._text_id, None
        return [p.TextEnd(id=text_id)]

    def _end_step(self) -> list[p.Chunk]:
        out = self._end_text()
        if self._step_open:
            self._step_open = False
            out.append(p.FinishStep())
        return out
