"""Request and response bodies of the sessions API, one class per direction."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from backend.api.inputs import Metadata, Title
from backend.chat.ui_stream import approval_id_of
from backend.errors import BadRequest
from backend.store.awaiting import AwaitingCall
from backend.store.models import ChatMessage, ChatSession


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title | None = None
    metadata: Metadata = Field(default_factory=dict)
    """Free-form data of the host app (e.g. the page the panel was opened on): JSON of at most 16 KB, 8 levels,
    integers within ±2^53, no NUL characters."""


class SessionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: Title | None


class SessionPublic(BaseModel):
    id: UUID
    title: str | None
    metadata: dict[str, Any]
    message_count: int
    prompt_tokens: int
    completion_tokens: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, s: ChatSession) -> SessionPublic:
        return cls(
            id=s.id,
            title=s.title,
            metadata=s.metadata,
            message_count=s.message_count,
            prompt_tokens=s.prompt_tokens,
            completion_tokens=s.completion_tokens,
            created_at=s.created_at,
            updated_at=s.updated_at,
        )


class MessagePublic(BaseModel):
    id: UUID
    sequence: int
    role: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    name: str | None
    refusal: str | None
    client_message_id: str | None
    token_count: int
    created_at: datetime
    reasoning: str | None = None
    """Reasoning the model streamed with an assistant message (never sent back to the model)."""
    model: str | None = None
    """The model that wrote an assistant message."""
    usage: dict[str, int] | None = None
    """The provider's usage of the step an assistant message ends: `prompt_tokens`, `completion_tokens`,
    `cached_tokens`, `reasoning_tokens`."""

    @classmethod
    def of(cls, m: ChatMessage) -> MessagePublic:
        return cls(
            id=m.id,
            sequence=m.sequence,
            role=m.role,
            content=m.content,
            tool_calls=m.tool_calls,
            tool_call_id=m.tool_call_id,
            name=m.name,
            refusal=m.refusal,
            client_message_id=m.client_message_id,
            token_count=m.token_count,
            created_at=m.created_at,
            reasoning=m.reasoning,
            model=m.model,
            usage=m.usage,
        )


class SessionPage(BaseModel):
    sessions: list[SessionPublic]
    next_cursor: str | None
    """Pass as `cursor` to get the next page; null on the last page."""


class ActiveTask(BaseModel):
    task_id: str
    status: str


class AwaitingPublic(BaseModel):
    """A tool call that waits for a person."""

    tool_call_id: str
    kind: str
    """`frontend` (the browser runs the tool), `ask_user` (a question) or `approval` (a server tool to approve)."""
    tool_name: str
    input: dict[str, Any]
    """The call's arguments (for `ask_user`: `question` and, optionally, `choices`)."""
    approval_id: str | None
    """For `approval`: the id useChat's `addToolApprovalResponse` takes."""
    expires_at: datetime
    """After this the call closes unanswered (`COPILOT_HUMAN_INPUT_TIMEOUT_SECONDS`)."""
    task_id: str | None
    """The turn that asked."""

    @classmethod
    def of(cls, call: AwaitingCall) -> AwaitingPublic:
        return cls(
            tool_call_id=call.tool_call_id,
            kind=call.kind,
            tool_name=call.tool_name,
            input=call.input,
            approval_id=approval_id_of(call.tool_call_id) if call.kind == "approval" else None,
            expires_at=call.expires_at,
            task_id=call.turn_id,
        )


class SessionDetail(SessionPublic):
    active_task: ActiveTask | None
    """The reply being generated now, if any: resume it with `GET /api/chat/tasks/{task_id}/stream`."""
    active_task_known: bool = True
    """False when Redis, which tracks running replies, did not answer: `active_task` is null because it is unknown,
    while the session and its messages come from Postgres as usual."""
    awaiting: list[AwaitingPublic] = Field(default_factory=list)
    """Tool calls that wait for a person; answer them with the `tool-calls/{id}/output` or `/approval` endpoints
    (or useChat). Empty when nothing waits."""
    messages: list[MessagePublic]
    """Messages with sequence greater than the request's `after`, oldest first."""
    next_after: int | None
    """Pass as `after` to get the next page of messages; null when there are no more."""


def encode_cursor(session: ChatSession) -> str:
    raw = f"{session.updated_at.isoformat()}|{session.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    """The keyset position of a `next_cursor`; `BadRequest` for anything `encode_cursor` could not have made."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        stamp, _, ident = raw.partition("|")
        if not raw.isprintable():
            raise ValueError("control characters")
        when = datetime.fromisoformat(stamp)
        if when.tzinfo is None:
            raise ValueError("no time zone")
        # In UTC now, so a stamp whose offset pushes it past year 1 or 9999 fails here, not in the driver.
        return when.astimezone(UTC), UUID(ident)
    except (ValueError, OverflowError) as e:
        raise BadRequest("malformed cursor") from e
