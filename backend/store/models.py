"""Stored values: a chat session and its messages. Pure data; the SQL and the cache live elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, TypedDict
from uuid import UUID

Role = Literal["system", "user", "assistant", "tool"]

AwaitingKind = Literal["frontend", "ask_user", "approval"]
"""What a tool call waits for: the browser to run a frontend tool, the user to answer `ask_user`, or the user's
approval of a server tool."""

AwaitingState = Literal["waiting", "approved", "answered", "failed", "denied", "expired", "unanswered"]
"""Where a call that waited for a person stands; `waiting` and `approved` are open (see migration 0007)."""


@dataclass(frozen=True, slots=True)
class ChatSession:
    id: UUID
    user_id: str
    title: str | None
    metadata: dict[str, Any]
    message_count: int
    """Sequence of the newest message (sequences start at 1 and have no gaps)."""
    prompt_tokens: int
    completion_tokens: int
    created_at: datetime
    updated_at: datetime
    summary: str | None = None
    """Rolling summary of messages 1..`summary_through`; the prompt uses it instead of them."""
    summary_tokens: int = 0
    summary_through: int = 0
    live_tokens: int = 0
    """Token total of the messages after `summary_through` (maintained by appends and summary commits)."""


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message about to be appended; the store allocates its sequence."""

    role: Role
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    refusal: str | None = None
    client_message_id: str | None = None
    """Set by the client for user messages: a resend with the same id returns the stored message."""
    token_count: int = 0
    reasoning: str | None = None
    """Reasoning the model streamed with an assistant message; kept for the user, never sent back to the model."""
    model: str | None = None
    """The model that wrote an assistant message."""
    usage: dict[str, int] | None = None
    """The provider's usage of the step an assistant message ends (`prompt_tokens`, `completion_tokens`,
    `cached_tokens`, `reasoning_tokens`)."""
    write_key: str | None = None
    """Set by the turn for the messages of its steps (`<turn id>:<step>:<index>`): an append finds a key already
    stored when an earlier attempt of the same write committed (its reply was lost, or the write was kept in Redis
    and stored meanwhile), and writes nothing for it."""
    awaiting: AwaitingKind | None = None
    """Set on the placeholder tool message of a call that waits for a person (stored `waiting`)."""


class MessageRow(TypedDict):
    """A stored message as plain JSON values, the form the cache keeps: what a prompt needs, read without building
    a `ChatMessage`. A row read from the cache also holds the other columns, as JSON (ids and timestamp strings)."""

    sequence: int
    role: Role
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    name: str | None
    refusal: str | None
    token_count: int


@dataclass(frozen=True, slots=True)
class ChatMessage:
    id: UUID
    session_id: UUID
    sequence: int
    role: Role
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    name: str | None
    refusal: str | None
    client_message_id: str | None
    token_count: int
    created_at: datetime
    reasoning: str | None = None
    model: str | None = None
    usage: dict[str, int] | None = None
    """See `NewMessage`."""
    awaiting: AwaitingKind | None = None
    """On the tool message of a call that waited (or waits) for a person: what for."""
    awaiting_state: AwaitingState | None = None

    def row(self) -> MessageRow:
        return MessageRow(
            sequence=self.sequence,
            role=self.role,
            content=self.content,
            tool_calls=self.tool_calls,
            tool_call_id=self.tool_call_id,
            name=self.name,
            refusal=self.refusal,
            token_count=self.token_count,
        )


@dataclass(frozen=True, slots=True)
class ModelUsage:
    """The usage stored with one session's assistant messages written by one model, summed."""

    model: str | None
    """None for messages whose model was not recorded."""
    messages: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    reasoning_tokens: int


@dataclass(frozen=True, slots=True)
class AppendResult:
    messages: list[ChatMessage]
    """The stored messages in the order given: new rows, or the earlier rows a client id matched."""
    duplicates: frozenset[str] = field(default_factory=frozenset)
    """Client message ids that were already stored (nothing new was written for them)."""
    session: ChatSession | None = None
    """The session row as the append's transaction left it (message count and token totals included)."""
    repeated_keys: frozenset[str] = field(default_factory=frozenset)
    """Write keys that were already stored: an earlier attempt of this append committed, so neither the messages
    nor the usage were written again."""
    settled_awaiting: int = 0
    """Calls waiting for a person that this append (a new user message) closed as unanswered."""
    sent_along: bool = False
    """The Redis work handed to the append (`along`) was sent with its cache update."""
    history: list[MessageRow] | None = None
    """The session's messages after `read_after`, new ones included, as the cache update read them (None when it
    could not)."""


@dataclass(frozen=True, slots=True)
class ActiveTurnClaim:
    """Ask an append to also claim the session's active turn, in the same transaction: it succeeds when no turn
    holds the session or the holder's lease lapsed. The id is opaque to the store."""

    turn_id: str
    lease_seconds: float


class ActiveTurnHeld(Exception):
    """The session's active turn is held by `turn_id` (its lease has not lapsed); nothing was written."""

    def __init__(self, turn_id: str) -> None:
        super().__init__(f"the session's active turn is held by {turn_id}")
        self.turn_id = turn_id
