"""What a turn reports to tracing and analytics, behind one small interface.

The turn engine and runner call a `TurnTelemetry` at the moments that matter (model call, tool call, end of the
turn). Implementations (Langfuse tracing, PostHog analytics) must never block or raise into a turn: they hand the
data to their SDK's background batching. `NullTelemetry` is the default when nothing is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

log = logging.getLogger("copilot.telemetry")


@dataclass(frozen=True, slots=True)
class TurnFacts:
    turn_id: str
    session_id: UUID
    user_id: str
    prompt_name: str
    prompt_version: str
    model: str
    message_chars: int
    """Length of the user message (its content is not sent anywhere unless explicitly enabled)."""
    message_text: str | None = None
    """The user message itself. Each sink decides whether to send it: PostHog only with `posthog_capture_content`."""


@dataclass(frozen=True, slots=True)
class Generation:
    """One model call of a turn."""

    model: str
    started_at: float
    ended_at: float
    first_token_at: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    finish_reason: str | None
    error: str | None
    input_messages: Sequence[dict[str, Any]] = ()
    output_text: str = ""


class TurnTelemetry(Protocol):
    def generation(self, call: Generation) -> None: ...

    def tool(self, *, name: str, call_id: str, ok: bool, duration_ms: float, error: str | None) -> None: ...

    def ended(self, *, status: str, error_class: str | None) -> None: ...


class Telemetry(Protocol):
    def turn_started(self, facts: TurnFacts) -> TurnTelemetry: ...

    async def flush(self) -> None: ...


class _NullTurn:
    def generation(self, call: Generation) -> None:
        pass

    def tool(self, *, name: str, call_id: str, ok: bool, duration_ms: float, error: str | None) -> None:
        pass

    def ended(self, *, status: str, error_class: str | None) -> None:
        pass


class NullTelemetry:
    def turn_started(self, facts: TurnFacts) -> TurnTelemetry:
        return _NullTurn()

    async def flush(self) -> None:
        pass


class _FanOutTurn:
    def __init__(self, turns: Sequence[TurnTelemetry]) -> None:
        self._turns = turns

    def generation(self, call: Generation) -> None:
        for t in self._turns:
            t.generation(call)

    def tool(self, *, name: str, call_id: str, ok: bool, duration_ms: float, error: str | None) -> None:
        for t in self._turns:
            t.tool(name=name, call_id=call_id, ok=ok, duration_ms=duration_ms, error=error)

    def ended(self, *, status: str, error_class: str | None) -> None:
        for t in self._turns:
            t.ended(status=status, error_class=error_class)


class FanOut:
    """Several telemetry sinks as one."""

    def __init__(self, sinks: Sequence[Telemetry]) -> None:
        self._sinks = sinks

    def turn_started(self, facts: TurnFacts) -> TurnTelemetry:
        return _FanOutTurn([s.turn_started(facts) for s in self._sinks])

    async def flush(self) -> None:
        for s in self._sinks:
            await s.flush()


class _GuardedTurn:
    """Telemetry of one turn that can never raise into it: a failing sink is logged and ignored."""

    def __init__(self, turn: TurnTelemetry) -> None:
        self._turn = turn

    def generation(self, call: Generation) -> None:
        try:
            self._turn.generation(call)
        except Exception:
            log.exception("telemetry failed to record a model call")

    def tool(self, *, name: str, call_id: str, ok: bool, duration_ms: float, error: str | None) -> None:
        try:
            self._turn.tool(name=name, call_id=call_id, ok=ok, duration_ms=duration_ms, error=error)
        except Exception:
            log.exception("telemetry failed to record a tool call")

    def ended(self, *, status: str, error_class: str | None) -> None:
        try:
            self._turn.ended(status=status, error_class=error_class)
        except Exception:
            log.exception("telemetry failed to record the end of a turn")


def start_turn(telemetry: Telemetry, facts: TurnFacts) -> TurnTelemetry:
    """`telemetry.turn_started(facts)`, guarded so that telemetry can never break a turn."""
    try:
        return _GuardedTurn(telemetry.turn_started(facts))
    except Exception:
        log.exception("telemetry failed to start a turn")
        return _NullTurn()
