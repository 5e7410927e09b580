"""Product analytics of turns in PostHog: what users send, which tools run, how turns end.

Events, all with `distinct_id` = the user id and the chat `session_id` and `turn_id` as properties:

- `chat_message_sent` when a turn starts: `message_chars`, `model`, `prompt_name`, `prompt_version`.
- `chat_tool_called` per tool call: `tool`, `ok`, `duration_ms`.
- `chat_turn_completed` when a turn ends as completed or stopped by the user, `chat_turn_failed` when it failed
  or was interrupted by a shutdown (with `error_class`). Both carry `outcome` (the turn's status), `duration_ms`,
  `time_to_first_token_ms` (None if no text came), `prompt_tokens`, `completion_tokens`, `total_tokens`,
  `tool_count` and `model_calls` (summed by `turn_tally.py`, as in the turn log's end line).

No text is sent unless `capture_content` is on: then `chat_message_sent` carries `message` and a failed
`chat_tool_called` carries `error`. `capture()` only appends to the SDK's in-memory queue; its background thread
sends batches to `/batch/`, so PostHog being slow or down costs a turn nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from posthog import Posthog

from backend.observability.telemetry import Generation, TurnFacts, TurnTelemetry
from backend.observability.turn_tally import TurnTally

log = logging.getLogger("copilot.posthog")

CLOSE_SECONDS = 10.0
"""Shutdown waits this long at most for the last events to be sent."""

_COMPLETED_OUTCOMES = frozenset({"completed", "cancelled"})


def connect_posthog(api_key: str, host: str | None, **options: Any) -> Posthog:
    """A background-batching client. `options` go to `Posthog` (tests use them for short retries)."""

    def on_error(error: Exception, batch: list[dict[str, Any]]) -> None:
        log.warning("PostHog dropped %d events: %s", len(batch), error)

    defaults: dict[str, Any] = {"timeout": 5, "max_retries": 2, "on_error": on_error}
    return Posthog(api_key, host=host, **(defaults | options))


class PostHogTelemetry:
    """A `Telemetry` sink sending the events above."""

    def __init__(self, client: Posthog, *, capture_content: bool = False) -> None:
        self._client = client
        self._capture_content = capture_content

    def turn_started(self, facts: TurnFacts) -> TurnTelemetry:
        turn = _PostHogTurn(self._client, facts, capture_content=self._capture_content)
        properties: dict[str, Any] = {
            "message_chars": facts.message_chars,
            "model": facts.model,
            "prompt_name": facts.prompt_name,
            "prompt_version": facts.prompt_version,
        }
        if self._capture_content and facts.message_text is not None:
            properties["message"] = facts.message_text
        turn.capture("chat_message_sent", properties)
        return turn

    async def flush(self) -> None:
        await asyncio.to_thread(self._client.flush)

    async def close(self) -> None:
        """Send what is still queued (bounded by `CLOSE_SECONDS`) and stop the SDK's thread."""
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await asyncio.to_thread(self._client.shutdown)
        except TimeoutError:
            log.warning("PostHog did not take the last events within %.0fs; they are dropped", CLOSE_SECONDS)


class _PostHogTurn:
    def __init__(self, client: Posthog, facts: TurnFacts, *, capture_content: bool) -> None:
        self._client = client
        self._facts = facts
        self._capture_content = capture_content
        self._tally = TurnTally()

    def capture(self, event: str, properties: dict[str, Any]) -> None:
        facts = self._facts
        self._client.capture(
            event=event,
            distinct_id=facts.user_id,
            properties={"session_id": str(facts.session_id), "turn_id": facts.turn_id, **properties},
        )

    def generation(self, call: Generation) -> None:
        self._tally.generation(call)

    def tool(self, *, name: str, call_id: str, ok: bool, duration_ms: float, error: str | None) -> None:
        self._tally.tool(ok=ok)
        properties: dict[str, Any] = {"tool": name, "ok": ok, "duration_ms": round(duration_ms, 1)}
        if self._capture_content and error is not None:
            properties["error"] = error
        self.capture("chat_tool_called", properties)

    def ended(self, *, status: str, error_class: str | None) -> None:
        summary = self._tally.summary()
        properties: dict[str, Any] = {
            "outcome": status,
            "duration_ms": summary.duration_ms,
            "time_to_first_token_ms": summary.time_to_first_token_ms,
            "prompt_tokens": summary.prompt_tokens,
            "completion_tokens": summary.completion_tokens,
            "total_tokens": summary.total_tokens,
            "tool_count": summary.tool_calls,
            "model_calls": summary.model_calls,
            "model": self._facts.model,
            "prompt_version": self._facts.prompt_version,
        }
        if status in _COMPLETED_OUTCOMES:
            self.capture("chat_turn_completed", properties)
        else:
            self.capture("chat_turn_failed", properties | {"error_class": error_class or status})
