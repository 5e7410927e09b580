"""What a UI message stream has opened and not closed yet, and the chunks that close it.

A stream that stops early (its owner died, its Redis keys vanished, a follower lost Redis) must still end the way
the `ai` client needs it to: the open text part ended, every tool call closed (`tool-input-error` with the raw
input for a call whose arguments were still streaming, `tool-output-error` for one whose tool never answered, so
no client shows a tool running forever), the step finished, an `error`, and one `finish`. `OpenParts` reads a
stream chunk by chunk and says what is missing. Read from a cursor, it only knows what it saw after the cursor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from backend.chat import protocol as p
from backend.chat.error_codes import error_part

CUT_INPUT_TEXT = "The reply ended before this tool call's arguments were complete."
"""`errorText` of a call closed while its arguments were still streaming."""

NO_OUTPUT_TEXT = "The reply ended before this tool finished."
"""`errorText` of a call closed while its tool was running."""

_TEXT_DELTA = b'{"type":"text-delta"'
_FINISH = b'{"type":"finish"'


def is_finish(chunk_json: bytes) -> bool:
    """Whether a chunk (as `protocol.to_json` wrote it: `type` first) is the message's `finish`."""
    return chunk_json.startswith(_FINISH)


@dataclass(slots=True)
class _PendingInput:
    name: str
    raw: list[str] = field(default_factory=list)


@dataclass(slots=True)
class OpenParts:
    text_id: str | None = None
    """The open text part."""
    step_open: bool = False
    step_text: list[str] = field(default_factory=list)
    """The text of the unfinished step (only from `feed`, not `feed_json`)."""
    inputs: dict[str, _PendingInput] = field(default_factory=dict)
    """Calls whose arguments are streaming (after `tool-input-start`), with their raw text so far."""
    running: dict[str, str] = field(default_factory=dict)
    """Calls whose input is complete and whose output has not come (call id → tool name)."""
    finished: bool = False
    """The `finish` chunk was seen: nothing is missing."""

    def feed(self, chunk: p.Chunk) -> None:
        match chunk:
            case p.StartStep():
                self.step_open, self.step_text = True, []
            case p.FinishStep():
                self.step_open, self.text_id, self.step_text = False, None, []
            case p.TextStart(id=text_id):
                self.text_id = text_id
            case p.TextEnd():
                self.text_id = None
            case p.TextDelta(delta=delta):
                self.step_text.append(delta)
            case p.ToolInputStart(tool_call_id=call_id, tool_name=name):
                self.inputs[call_id] = _PendingInput(name)
            case p.ToolInputDelta(tool_call_id=call_id, input_text_delta=delta):
                if call_id in self.inputs:
                    self.inputs[call_id].raw.append(delta)
            case p.ToolInputAvailable(tool_call_id=call_id, tool_name=name):
                self.inputs.pop(call_id, None)
                self.running[call_id] = name
            case (
                p.ToolInputError(tool_call_id=call_id)
                | p.ToolOutputAvailable(tool_call_id=call_id)
                | p.ToolOutputError(tool_call_id=call_id)
            ):
                self.inputs.pop(call_id, None)
                self.running.pop(call_id, None)
            case p.Finish():
                self.finished = True

    def feed_json(self, chunk_json: bytes) -> None:
        """`feed` for a chunk as JSON; text deltas (most chunks, and they open or close nothing) are not parsed."""
        if chunk_json.startswith(_TEXT_DELTA):
            return
        try:
            self.feed(p.decode(chunk_json))
        except ValidationError:
            return  # not one of our chunks: it opened nothing we could close

    def close_tools(self) -> list[p.Chunk]:
        """Chunks that close every open tool call (the open text part is ended first: a tool chunk ends it)."""
        out: list[p.Chunk] = []
        if (self.inputs or self.running) and self.text_id is not None:
            out.append(p.TextEnd(id=self.text_id))
            self.text_id = None
        for call_id, pending in self.inputs.items():
            out.append(
                p.ToolInputError(
                    tool_call_id=call_id, tool_name=pending.name, input="".join(pending.raw), error_text=CUT_INPUT_TEXT
                )
            )
        out += [p.ToolOutputError(tool_call_id=call_id, error_text=NO_OUTPUT_TEXT) for call_id in self.running]
        self.inputs, self.running = {}, {}
        return out

    def closing(self, error_text: str, code: str = "interrupted") -> list[p.Chunk]:
        """What ends the message properly from here: open parts closed, the `data-error` part for `code`, `error`,
        `finish` (nothing if finished)."""
        if self.finished:
            return []
        out = self.close_tools()
        if self.text_id is not None:
            out.append(p.TextEnd(id=self.text_id))
            self.text_id = None
        if self.step_open:
            out.append(p.FinishStep())
            self.step_open = False
        out += [error_part(code), p.Error(error_text=error_text), p.Finish(finish_reason="error")]
        self.finished = True
        return out
