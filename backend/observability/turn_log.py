"""Turns in the logs: a `Telemetry` sink that binds a turn's ids to its task and logs its start and its end.

`turn_started` runs at the start of the turn's own task (`start_turn` in the runner), so the ids it binds
(`turn_id`, `session_id`, `user_id`; see `logs.py`) are on every line the turn logs from then on, on whichever pod
runs it. The end line sums the turn up for an operator: outcome, duration, time to first token, model calls,
tokens, tool calls and failures (counted by `turn_tally.py`, as PostHog's turn events are). Message and reply text
are logged only with `log_content` (`COPILOT_LOG_CONTENT`).
"""

from __future__ import annotations

import logging
from typing import Any

from backend.observability.logs import bind
from backend.observability.telemetry import Generation, TurnFacts, TurnTelemetry
from backend.observability.turn_tally import TurnTally

log = logging.getLogger("copilot.turn")

_QUIET_OUTCOMES = frozenset({"completed", "cancelled"})


class TurnLog:
    def __init__(self, *, content: bool = False) -> None:
        self._content = content

    def turn_started(self, facts: TurnFacts) -> TurnTelemetry:
        bind(turn_id=facts.turn_id, session_id=facts.session_id, user_id=facts.user_id)
        fields: dict[str, Any] = {
            "model": facts.model,
            "prompt": f"{facts.prompt_name}@{facts.prompt_version}",
            "message_chars": facts.message_chars,
        }
        if self._content and facts.message_text is not None:
            fields["message"] = facts.message_text
        log.info("turn started", extra={"fields": fields})
        return _LoggedTurn(content=self._content)

    async def flush(self) -> None:
        return None


class _LoggedTurn:
    def __init__(self, *, content: bool) -> None:
        self._content = content
        self._tally = TurnTally()
        self._reply: list[str] = []

    def generation(self, call: Generation) -> None:
        self._tally.generation(call)
        if self._content and call.output_text:
            self._reply.append(call.output_text)

    def tool(self, *, name: str, call_id: str, ok: bool, duration_ms: float, error: str | None) -> None:
        self._tally.tool(ok=ok)
        if ok:
            return
        fields: dict[str, Any] = {"tool": name, "call_id": call_id, "duration_ms": round(duration_ms, 1)}
        if self._content and error is not None:
            fields["error"] = error
        log.info("tool call failed", extra={"fields": fields})

    def ended(self, *, status: str, error_class: str | None) -> None:
        summary = self._tally.summary()
        fields: dict[str, Any] = {
            "outcome": status,
            "duration_ms": summary.duration_ms,
            "time_to_first_token_ms": summary.time_to_first_token_ms,
            "model_calls": summary.model_calls,
            "prompt_tokens": summary.prompt_tokens,
            "completion_tokens": summary.completion_tokens,
            "tool_calls": summary.tool_calls,
            "tool_failures": summary.tool_failures,
        }
        if error_class is not None:
            fields["error_class"] = error_class
        if self._content:
            fields["reply"] = "".join(self._reply)
        level = logging.INFO if status in _QUIET_OUTCOMES else logging.WARNING
        log.log(level, "turn ended: %s", status, extra={"fields": fields})
