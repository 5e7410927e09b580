"""The Vercel AI SDK *UI message stream* protocol: one typed chunk per wire event, and its SSE framing.

The `ai` npm package (v6) parses every event's `data:` as a chunk against `uiMessageChunkSchema`; the
classes here are the subset we emit, field for field (camelCase on the wire). Chunks are values: the
SSE `id:` (the stream cursor) is passed to `encode()` separately. The ordering rules are checked by the
tests' oracle, `tests/protocol_check.py`.

Serialisation: optional fields are left out when `None` (`exclude_if`), but required fields whose value
may be `null` (`input`, `output`, `data`, `messageMetadata`) are always written. A global
`exclude_none=True` would drop `"output": null`, which the SDK itself always sends.

Hot path (measured on CPython 3.11, pydantic-core 2.50): `model_dump_json()` costs ~1.3 us, most of it
Python-side overhead, so `to_json` calls the pydantic-core serializer directly (~0.5 us, ~0.8 us for a
400-character delta). `text-delta`, the one chunk sent per token, goes through orjson from a literal
dict instead (~0.35 us, ~0.45 us at 400 characters); a test checks that both give identical bytes.
Building the model (~1.3 us, validation) is now the larger cost of a delta, and it is the caller's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Discriminator, Field, JsonValue, Tag, TypeAdapter
from pydantic.alias_generators import to_camel

FinishReason = Literal["stop", "length", "content-filter", "tool-calls", "error", "other"]
"""Reasons `ai@6` accepts. No `unknown`: v6 rejects it (v5 allowed it)."""


def _is_none(value: object) -> bool:
    return value is None


class BaseChunk(BaseModel):
    """Common configuration: camelCase aliases, no unknown fields, immutable."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


class Start(BaseChunk):
    type: Literal["start"] = "start"
    message_id: str
    """Id of the assistant message; the client replaces a message with the same id in place."""
    message_metadata: JsonValue = Field(default=None, exclude_if=_is_none)
    """Deep-merged into `message.metadata` by the client."""


class StartStep(BaseChunk):
    type: Literal["start-step"] = "start-step"


class FinishStep(BaseChunk):
    """Ends a step. v5/v6 clients forget open text parts here, so every `text-end` must come first."""

    type: Literal["finish-step"] = "finish-step"


class TextStart(BaseChunk):
    type: Literal["text-start"] = "text-start"
    id: str
    """Text part id; later `text-delta`/`text-end` refer to it."""


class TextDelta(BaseChunk):
    type: Literal["text-delta"] = "text-delta"
    id: str
    """Id of an open text part (after its `text-start`)."""
    delta: str
    """Text appended to the part."""


class TextEnd(BaseChunk):
    type: Literal["text-end"] = "text-end"
    id: str
    """Id of the open text part to close."""


class ReasoningStart(BaseChunk):
    """Opens a reasoning part (`type: reasoning`); the panel shows it collapsed."""

    type: Literal["reasoning-start"] = "reasoning-start"
    id: str
    """Reasoning part id; later `reasoning-delta`/`reasoning-end` refer to it."""


class ReasoningDelta(BaseChunk):
    type: Literal["reasoning-delta"] = "reasoning-delta"
    id: str
    """Id of an open reasoning part (after its `reasoning-start`)."""
    delta: str
    """Reasoning text appended to the part."""


class ReasoningEnd(BaseChunk):
    type: Literal["reasoning-end"] = "reasoning-end"
    id: str
    """Id of the open reasoning part to close."""


class ToolInputStart(BaseChunk):
    type: Literal["tool-input-start"] = "tool-input-start"
    tool_call_id: str
    """Id of the tool call; every later tool chunk of this call carries it."""
    tool_name: str
    """Name of the tool; the client's part type is `tool-<toolName>`."""


class ToolInputDelta(BaseChunk):
    type: Literal["tool-input-delta"] = "tool-input-delta"
    tool_call_id: str
    """Id of a call opened by `tool-input-start`."""
    input_text_delta: str
    """Raw JSON text of the arguments, appended; the client parses it as partial JSON."""


class ToolInputAvailable(BaseChunk):
    type: Literal["tool-input-available"] = "tool-input-available"
    tool_call_id: str
    """Id of the tool call (a `tool-input-start` before it is optional)."""
    tool_name: str
    """Name of the tool."""
    input: JsonValue
    """Parsed arguments. Always written, even when `null`."""


class ToolInputError(BaseChunk):
    """A call whose input is unusable: invalid arguments, or arguments cut off when the reply ended. It ends the
    call (`state: output-error`); no output follows. v5/v6 keep `input` as the part's `rawInput`, v7 as `input`."""

    type: Literal["tool-input-error"] = "tool-input-error"
    tool_call_id: str
    """Id of the tool call (usually opened by `tool-input-start`)."""
    tool_name: str
    """Name of the tool."""
    input: JsonValue
    """The raw argument text as the model sent it (as far as it got). Always written."""
    error_text: str
    """Why the call cannot run; shown in the tool part."""


class ToolOutputAvailable(BaseChunk):
    type: Literal["tool-output-available"] = "tool-output-available"
    tool_call_id: str
    """Id of a tool call the client already knows (from `tool-input-*`)."""
    output: JsonValue
    """Result of the tool. Always written, even when `null`."""


class ToolOutputError(BaseChunk):
    type: Literal["tool-output-error"] = "tool-output-error"
    tool_call_id: str
    """Id of a tool call the client already knows (from `tool-input-*`)."""
    error_text: str
    """Message shown in the tool part (`state: output-error`)."""


class ToolApprovalRequest(BaseChunk):
    """The call waits for the user's approval (ai 6 and 7: the part's state becomes `approval-requested`); the
    answer comes back with the next request (`addToolApprovalResponse`) or the REST endpoint."""

    type: Literal["tool-approval-request"] = "tool-approval-request"
    approval_id: str
    tool_call_id: str
    """Id of a tool call the client already knows (from `tool-input-*`)."""


class ToolOutputDenied(BaseChunk):
    """The user denied the call (ai 6 and 7: `state: output-denied`); it did not run."""

    type: Literal["tool-output-denied"] = "tool-output-denied"
    tool_call_id: str


class Error(BaseChunk):
    """An error after streaming started; `useChat` stops reading here and shows `errorText`."""

    type: Literal["error"] = "error"
    error_text: str
    """Message for the user; never a stack trace."""


class Finish(BaseChunk):
    type: Literal["finish"] = "finish"
    finish_reason: FinishReason | None = Field(default=None, exclude_if=_is_none)
    """Why the message ended; reported to `onFinish`."""
    message_metadata: JsonValue = Field(default=None, exclude_if=_is_none)
    """Deep-merged into `message.metadata` by the client."""


class MessageMetadata(BaseChunk):
    type: Literal["message-metadata"] = "message-metadata"
    message_metadata: JsonValue
    """Deep-merged into `message.metadata` by the client. Always written."""


class Abort(BaseChunk):
    """Tells the client the turn was stopped; it changes no client state."""

    type: Literal["abort"] = "abort"
    reason: str | None = Field(default=None, exclude_if=_is_none)
    """Why the turn was stopped."""


class DataPart(BaseChunk):
    """A custom `data-<name>` part. Same `type` and `id` again replaces the part in place."""

    type: str = Field(pattern=r"^data-.+")
    """`data-<name>`; the client stores it as a part of that type."""
    data: JsonValue
    """Payload. Always written, even when `null`."""
    id: str | None = Field(default=None, exclude_if=_is_none)
    """Stable id, so a later chunk can update the part."""
    transient: bool | None = Field(default=None, exclude_if=_is_none)
    """`true`: only delivered to `onData`, never stored in the message."""


def _chunk_tag(value: Any) -> str | None:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if not isinstance(kind, str):
        return None
    return "data" if kind.startswith("data-") else kind


Chunk = Annotated[
    Annotated[Start, Tag("start")]
    | Annotated[StartStep, Tag("start-step")]
    | Annotated[FinishStep, Tag("finish-step")]
    | Annotated[TextStart, Tag("text-start")]
    | Annotated[TextDelta, Tag("text-delta")]
    | Annotated[TextEnd, Tag("text-end")]
    | Annotated[ReasoningStart, Tag("reasoning-start")]
    | Annotated[ReasoningDelta, Tag("reasoning-delta")]
    | Annotated[ReasoningEnd, Tag("reasoning-end")]
    | Annotated[ToolInputStart, Tag("tool-input-start")]
    | Annotated[ToolInputDelta, Tag("tool-input-delta")]
    | Annotated[ToolInputAvailable, Tag("tool-input-available")]
    | Annotated[ToolInputError, Tag("tool-input-error")]
    | Annotated[ToolOutputAvailable, Tag("tool-output-available")]
    | Annotated[ToolOutputError, Tag("tool-output-error")]
    | Annotated[ToolApprovalRequest, Tag("tool-approval-request")]
    | Annotated[ToolOutputDenied, Tag("tool-output-denied")]
    | Annotated[Error, Tag("error")]
    | Annotated[Finish, Tag("finish")]
    | Annotated[MessageMetadata, Tag("message-metadata")]
    | Annotated[Abort, Tag("abort")]
    | Annotated[DataPart, Tag("data")],
    Discriminator(_chunk_tag),
]
"""Any chunk we emit, discriminated by `type` (`data-*` types map to `DataPart`)."""

_CHUNK_ADAPTER: Final[TypeAdapter[Chunk]] = TypeAdapter(Chunk)

DONE: Final = b"data: [DONE]\n\n"
"""Last event of every stream. The client only skips it; the end of the body completes the message."""

UI_MESSAGE_STREAM_HEADERS: Final = MappingProxyType(
    {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "connection": "keep-alive",
        "x-vercel-ai-ui-message-stream": "v1",
        "x-accel-buffering": "no",
    }
)
"""The SDK's `UI_MESSAGE_STREAM_HEADERS`; `x-accel-buffering: no` stops nginx from buffering the stream."""


def to_json(chunk: Chunk) -> bytes:
    """The chunk as compact JSON in wire form (camelCase, optional `None` fields left out)."""
    if type(chunk) is TextDelta:
        # orjson (3.13) returns its whole write buffer, 4 KB, as the bytes object; a turn keeps every payload in its
        # log, so each token would hold 4 KB for as long as the turn runs. `%` copies it into one of its own size.
        return b"%b" % orjson.dumps({"type": "text-delta", "id": chunk.id, "delta": chunk.delta})
    return chunk.__pydantic_serializer__.to_json(chunk, by_alias=True)


def frame(data: bytes, event_id: str | None = None) -> bytes:
    """One SSE event carrying `data` (a JSON chunk without newlines), with an `id:` line if given.

    `event_id` must not contain a newline; it is the cursor a client resumes from.
    """
    if event_id is None:
        return b"data: %b\n\n" % data
    return b"id: %b\ndata: %b\n\n" % (event_id.encode(), data)


def encode(chunk: Chunk, event_id: str | None = None) -> bytes:
    """`chunk` as one SSE event: `id: <event_id>\\ndata: <json>\\n\\n` (no `id:` line when `None`)."""
    return frame(to_json(chunk), event_id)


def decode(data: str | bytes) -> Chunk:
    """Parse one JSON chunk (the `data:` of an event, as `to_json` wrote it) back into its model.

    Raises `pydantic.ValidationError` for an unknown `type`, a missing field or an unknown field.
    """
    return _CHUNK_ADAPTER.validate_json(data)


def heartbeat() -> bytes:
    """An SSE comment: keeps proxies from closing an idle stream; every client ignores it."""
    return b": keep-alive\n\n"


def sse_stream(entries: AsyncIterator[tuple[str, bytes | None]]) -> AsyncIterator[bytes]:
    """A turn's registry entries as an SSE body: one event per chunk with its cursor as `id:`, a heartbeat comment
    for each idle tick (`("", None)`), then `[DONE]`. A chunk without a cursor (`""`: one a follower made up to end
    a stream it lost) gets no `id:` line, so a client keeps the last real cursor (an empty `id:` would reset it)."""

    async def frames() -> AsyncIterator[bytes]:
        async for cursor, chunk in entries:
            yield heartbeat() if chunk is None else frame(chunk, cursor or None)
        yield DONE

    return frames()
