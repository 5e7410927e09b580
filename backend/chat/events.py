"""What happens in a turn, as domain events. The UI stream translator turns them into AI SDK chunks; nothing
here knows about the wire protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class TurnStarted:
    message_id: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StepStarted:
    pass


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """Reasoning the model streamed before or beside its answer: shown to the user, stored with the message, not
    sent back to the model."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    call_id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolInputDelta:
    """A fragment of a started call's argument text, as the model streams it (raw, not yet parsed)."""

    call_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallReady:
    call_id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolInputFailed:
    """A call whose arguments are unusable (not a JSON object): it is not run. The UI shows the raw text."""

    call_id: str
    name: str
    raw_arguments: str
    """The argument text exactly as the model sent it."""
    error_text: str


@dataclass(frozen=True, slots=True)
class ToolFinished:
    call_id: str
    ok: bool
    output: Any
    error_text: str | None = None


@dataclass(frozen=True, slots=True)
class ToolAwaiting:
    """A call the turn does not run now: it waits for a person (a frontend tool the browser runs, a question to the
    user, or the user's approval). The turn stores it as waiting and ends; an answer continues the conversation."""

    call_id: str
    name: str
    kind: str
    """`frontend`, `ask_user` or `approval`."""
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolAnswered:
    """The result of a call that waited, as a continuation starts: the browser's output, the user's answer, or what
    an approved tool returned. Its call was shown by an earlier turn of the same message."""

    call_id: str
    ok: bool
    output: Any
    error_text: str | None = None


@dataclass(frozen=True, slots=True)
class ToolDenied:
    """The user denied a call that needed approval: it did not run (the model is told)."""

    call_id: str
    text: str
    """What the model reads (the denial and the user's reason): ai 5, which has no denied state, shows it as the
    call's error."""


@dataclass(frozen=True, slots=True)
class StepFinished:
    pass


@dataclass(frozen=True, slots=True)
class Status:
    """Transient progress the UI may show (e.g. "compacting the conversation"); never stored in the message."""

    name: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TurnFailed:
    """The turn cannot go on. What it produced so far is stored; the message ends with `finish: error`."""

    error_text: str
    code: str = "error"


@dataclass(frozen=True, slots=True)
class TurnAborted:
    """Someone stopped the turn (the stop button). What it produced is stored, marked interrupted."""

    reason: str


@dataclass(frozen=True, slots=True)
class TurnEnded:
    finish_reason: str
    metadata: dict[str, Any] | None = None
    """What the client learns about the finished message (usage, model, cost); None: nothing."""
    session_freed: bool = False
    """The last step's append freed the session's active turn in Postgres, so whoever runs the turn need not (not
    sent to clients)."""


TurnEvent = (
    TurnStarted
    | StepStarted
    | TextDelta
    | ReasoningDelta
    | ToolCallStarted
    | ToolInputDelta
    | ToolCallReady
    | ToolInputFailed
    | ToolFinished
    | ToolAwaiting
    | ToolAnswered
    | ToolDenied
    | StepFinished
    | Status
    | TurnFailed
    | TurnAborted
    | TurnEnded
)
