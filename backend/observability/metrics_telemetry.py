"""Turns as Prometheus metrics: a `Telemetry` sink counting turns, their first token, duration and tool calls.

Nothing here runs per chunk: the engine reports a model call once it has ended (with its first-token time) and a
tool call once it has answered, so a turn costs a handful of counter adds whatever its length. Model calls, retries
and tokens are counted by the model client itself (`ModelMetrics`), which sees titles and summaries as well.
"""

from __future__ import annotations

import time

from backend.observability.metrics import Metrics, label
from backend.observability.telemetry import Generation, TurnFacts, TurnTelemetry


class MetricsTelemetry:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def turn_started(self, facts: TurnFacts) -> TurnTelemetry:
        self._metrics.turns_started.inc()
        self._metrics.turns_running.inc()
        return _MetricsTurn(self._metrics)

    async def flush(self) -> None:
        return None


class _MetricsTurn:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._started = time.time()
        self._first_token_seen = False
        self._ended = False

    def generation(self, call: Generation) -> None:
        if not self._first_token_seen and call.first_token_at is not None:
            self._first_token_seen = True
            self._metrics.first_token.observe(max(0.0, call.first_token_at - self._started))

    def tool(self, *, name: str, call_id: str, ok: bool, duration_ms: float, error: str | None) -> None:
        m = self._metrics
        tool = label(name)
        m.child(m.tool_calls, tool, "ok" if ok else "error").inc()
        m.child(m.tool_duration, tool).observe(duration_ms / 1000)

    def ended(self, *, status: str, error_class: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        m = self._metrics
        m.turns_running.dec()
        m.child(m.turns_finished, status).inc()
        m.child(m.turn_duration, status).observe(time.time() - self._started)


class ModelMetrics:
    """The model client's observer (`chat.llm.CallObserver`): every call's outcome, retries and tokens."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def succeeded(self, model: str, seconds: float) -> None:
        m = self._metrics
        model = label(model)
        m.child(m.model_calls, model, "ok").inc()
        m.child(m.model_duration, model).observe(seconds)

    def failed(self, model: str, code: str | None, *, retrying: bool) -> None:
        m = self._metrics
        code = label(code, default="model_error")
        if retrying:
            m.child(m.model_retries, code).inc()
            return
        m.child(m.model_errors, code).inc()
        m.child(m.model_calls, label(model), "error").inc()

    def used(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        m = self._metrics
        model = label(model)
        m.child(m.model_tokens, model, "input").inc(prompt_tokens)
        m.child(m.model_tokens, model, "output").inc(completion_tokens)
