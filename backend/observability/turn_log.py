"""Turns in the logs: a `Telemetry` sink that binds a turn's ids to its task and logs its start and its end.

`turn_started` runs at the start of the turn's own task (`start_turn` in the runner), so the ids it binds
(`turn_id`, `session_id`, `user_id`; see `logs.py`) are on every line the turn logs from then on, on whichever pod
runs it. The end line sums the turn up for an operator: outcome, duration, time to first token, model calls,
tokens, tool calls and failures. Message and reply text are logged only with `log_content` (`COPILOT_LOG_CONTENT`).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from backend.observability.logs import bind
from backend.observability.telemetry import Generation, TurnFacts, TurnTelemetry

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
        self._started = time.time()
        self._first_token: float | None = None
        self._model_calls = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._tools = 0
        self._tools_failed = 0
        self._reply: list[str] = []

    def generation(self, call: Generation) -> None:
        self._model_calls += 1
        self._prompt_tokens += call.prompt_tokens or 0
        self._completion_tokens += call.completion_tokens or 0
        if self._first_token is None and call.first_token_at is not None:
            self._first_token = call.first_token_at
        if self._content and call.output_text:
            self._reply.append(call.output_text)

    def tool(self, *, name: str, call_id: str, ok: bool, duration_ms: float, error: str | None) -> None:
        self._tools += 1
        if ok:
            return
        self._tools_failed += 1
        fields: dict[str, Any] = {"tool": name, "call_id": call_id, "duration_ms": round(duration_ms, 1)}
        if self._content and error is not None:
            fields["error"] = error
        log.info("tool call failed", extra={"fields": fields})

    def ended(self, *, status: str, error_class: str | None) -> None:
        fields: dict[str, Any] = {
            "outcome": status,
            "duration_ms": round((time.time() - self._started) * 1000, 1),
            "time_to_first_token_ms": (
                round((self._first_token - self._started) * 1000, 1) if self._first_token is not None else None
            ),
            "model_calls": self._model_calls,
            "prompt_tokens": self._prompt_tokens,
            "completion_tokens": self._completion_tokens,
            "tool_calls": self._tools,
            "tool_failures": self._tools_failed,
        }
        if error_class is not None:
            fields["error_class"] = error_class
        if self._content:
            fields["reply"] = "".join(self._reply)
        level = logging.INFO if status in _QUIET_OUTCOMES else logging.WARNING
        log.log(level, "turn ended: %s", status, extra={"fields": fields})
