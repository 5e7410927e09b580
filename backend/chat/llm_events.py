"""The model's answer as domain events, whichever API the provider speaks (`llm.py` chooses the wire): text and
reasoning as they stream, tool calls as they start and as their arguments arrive, then `Completed`. Values only;
the client that produces them lives in `llm.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class TextChunk:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningChunk:
    """Reasoning the provider streams beside the answer (`reasoning_content` or `reasoning` deltas)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallHeader:
    """The model began a tool call: its id and name are known, its arguments are still streaming."""

    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolArgumentsDelta:
    """More of a started call's raw argument text (fragments before the start come with it, joined)."""

    id: str
    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments_json: str
    """The raw argument text the model produced."""
    arguments: dict[str, Any] | None
    """Parsed arguments; None when `arguments_json` is not a JSON object (see `parse_error`)."""
    parse_error: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    """Prompt tokens the provider served from its cache (`prompt_tokens_details.cached_tokens`); part of
    `prompt_tokens`."""
    reasoning_tokens: int = 0
    """Completion tokens spent on reasoning (`completion_tokens_details.reasoning_tokens`); part of
    `completion_tokens`."""


@dataclass(frozen=True, slots=True)
class Completed:
    """The model's stream ended normally."""

    finish_reason: str
    tool_calls: list[ToolCall]
    usage: Usage | None
    response_id: str | None = None
    """The provider's id of this response, where the API has one the service uses (Responses API)."""


ModelEvent = TextChunk | ReasoningChunk | ToolCallHeader | ToolArgumentsDelta | Completed


@dataclass(slots=True)
class PartialCall:
    """A tool call whose pieces are still streaming; `announced`: its `ToolCallHeader` went out."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)
    announced: bool = False


def finish_call(index: int, partial: PartialCall) -> ToolCall:
    """The call once its stream ended: the argument text parsed once, here (an unusable one is reported, not raised)."""
    raw = "".join(partial.arguments)
    call_id = partial.id or f"call_{index}"
    try:
        parsed = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as e:
        return ToolCall(call_id, partial.name, raw, None, f"arguments are not valid JSON: {e}")
    if not isinstance(parsed, dict):
        return ToolCall(call_id, partial.name, raw, None, "arguments are not a JSON object")
    return ToolCall(call_id, partial.name, raw, parsed)
