"""The sum of a turn for the sinks that report it at its end (the turn log, PostHog): duration, time to first token,
model calls, tokens and tool calls, counted as the turn reports them. One definition, so the log line and the
analytics event of a turn always agree."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from backend.observability.telemetry import Generation


@dataclass(frozen=True, slots=True)
class TurnSummary:
    duration_ms: float
    time_to_first_token_ms: float | None
    """From the start of the turn to the first token of its first model call that produced one; None if none did."""
    model_calls: int
    prompt_tokens: int
    completion_tokens: int
    """Summed over the model calls; a call whose provider reported no usage counts 0."""
    tool_calls: int
    tool_failures: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class TurnTally:
    """Counts one turn's model calls and tool calls as they are reported; `summary()` sums it up at its end.

    `clock` gives wall-clock seconds, the time base of `Generation.first_token_at`."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._started = clock()
        self._first_token: float | None = None
        self._model_calls = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._tool_calls = 0
        self._tool_failures = 0

    def generation(self, call: Generation) -> None:
        self._model_calls += 1
        self._prompt_tokens += call.prompt_tokens or 0
        self._completion_tokens += call.completion_tokens or 0
        if self._first_token is None and call.first_token_at is not None:
            self._first_token = call.first_token_at

    def tool(self, *, ok: bool) -> None:
        self._tool_calls += 1
        if not ok:
            self._tool_failures += 1

    def summary(self) -> TurnSummary:
        first_token = self._first_token
        return TurnSummary(
            duration_ms=_ms(self._clock() - self._started),
            time_to_first_token_ms=_ms(first_token - self._started) if first_token is not None else None,
            model_calls=self._model_calls,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            tool_calls=self._tool_calls,
            tool_failures=self._tool_failures,
        )


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)
