"""Frames of the WebSocket transport: what a client may send, and what the server sends back.

Every frame is one JSON text message with a `type`. Client frames are parsed against one discriminated union;
server frames are small models, except `chunk`, whose AI SDK chunk is already JSON (as stored in the turn's Redis
Stream) and is embedded as is instead of being parsed and serialised again.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from backend.api.chat_schemas import FrontendToolDeclaration, SendMessage
from backend.api.inputs import StreamCursor, Text, ToolOutputValue
from backend.errors import CopilotError

# --- client → server ---------------------------------------------------------------------------------


class SendFrame(SendMessage):
    """Start a turn with a `SendMessage` body (either form) and stream it."""

    type: Literal["message"]


class CancelFrame(BaseModel):
    """Stop the session's running turn."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["cancel"]


class PingFrame(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["ping"]


class ResumeFrame(BaseModel):
    """Follow the session's running turn after a cursor (from its start without one)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["resume"]
    after: StreamCursor | None = None
    """The `id` of the last `chunk` frame received."""


class ToolOutputFrame(BaseModel):
    """The result of a frontend tool the client ran: `output`, or `error` when it failed."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["tool_output"]
    tool_call_id: str = Field(min_length=1, max_length=200)
    output: ToolOutputValue = None
    error: Text | None = Field(default=None, max_length=10_000)
    tools: list[FrontendToolDeclaration] | None = Field(default=None, max_length=32)


class ApprovalFrame(BaseModel):
    """Approve or deny a call that waits for approval (`reason`: why, shown to the model when denied)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["approval"]
    tool_call_id: str = Field(min_length=1, max_length=200)
    approved: bool
    reason: Text | None = Field(default=None, max_length=2000)


class ReplyFrame(BaseModel):
    """The user's answer to an `ask_human` question."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["reply"]
    tool_call_id: str = Field(min_length=1, max_length=200)
    answer: Text = Field(max_length=10_000)


ClientFrame = Annotated[
    SendFrame | CancelFrame | PingFrame | ResumeFrame | ToolOutputFrame | ApprovalFrame | ReplyFrame,
    Field(discriminator="type"),
]
client_frame: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)


# --- server → client ---------------------------------------------------------------------------------


class ServerFrame(BaseModel):
    model_config = ConfigDict(frozen=True)

    def encode(self) -> str:
        return self.model_dump_json(exclude_none=True)


class Pong(ServerFrame):
    type: Literal["pong"] = "pong"


class Idle(ServerFrame):
    """The session has no running turn (answer to `resume` and `cancel`)."""

    type: Literal["idle"] = "idle"


class Heartbeat(ServerFrame):
    """Sent while a followed turn is silent for `COPILOT_HEARTBEAT_SECONDS`."""

    type: Literal["heartbeat"] = "heartbeat"


class Done(ServerFrame):
    """The followed turn has ended (after its `finish` chunk)."""

    type: Literal["done"] = "done"
    task_id: str


class AskHuman(ServerFrame):
    """The model asks the user (`ask_user`): answer with a `reply` frame. Sent beside the call's chunks."""

    type: Literal["ask_human"] = "ask_human"
    tool_call_id: str
    question: str
    choices: list[str] | None = None


class Waiting(ServerFrame):
    """An answer was taken; other calls of the message still wait (their ids)."""

    type: Literal["waiting"] = "waiting"
    tool_call_ids: list[str]


class ErrorFrame(ServerFrame):
    """A refused client frame; the socket stays open. Codes are those of the HTTP API's errors."""

    type: Literal["error"] = "error"
    code: str
    message: str
    details: dict[str, Any] | None = None
    retry_after: int | None = None
    """Seconds to wait before trying again (`rate_limited`, `overloaded`, `service_unavailable` while the server
    shuts down), as HTTP's `Retry-After`."""

    @classmethod
    def of(cls, error: CopilotError) -> ErrorFrame:
        header = error.headers().get("retry-after")
        retry_after = int(header) if header is not None else None
        return cls(code=error.code, message=error.message, details=error.details or None, retry_after=retry_after)


def chunk_frame(entry_id: str, chunk: bytes) -> str:
    """`{type: "chunk", id, chunk}` around a chunk that is already JSON."""
    return orjson.dumps({"type": "chunk", "id": entry_id, "chunk": orjson.Fragment(chunk)}).decode()


def ask_human_of(chunk: bytes) -> AskHuman | None:
    """The `ask_human` frame that goes with a chunk: the `tool-input-available` of an `ask_user` call."""
    if b'"ask_user"' not in chunk or b'"tool-input-available"' not in chunk:  # the per-token path stays cheap
        return None
    parsed = orjson.loads(chunk)
    if parsed.get("type") != "tool-input-available" or parsed.get("toolName") != "ask_user":
        return None
    args = parsed.get("input") if isinstance(parsed.get("input"), dict) else {}
    choices = args.get("choices")
    return AskHuman(
        tool_call_id=str(parsed.get("toolCallId", "")),
        question=str(args.get("question", "")),
        choices=[str(c) for c in choices] if isinstance(choices, list) else None,
    )
