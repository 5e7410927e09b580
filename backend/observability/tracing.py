"""OpenTelemetry traces to any OTLP collector: a span per HTTP request, per turn, per model call, per tool call, and
per Redis command and Postgres statement made inside one of those.

`Tracing` owns the app's `TracerProvider` (never the process's global one, as with Langfuse: several apps can live
in one process, and nothing else is exported by accident). It is off (no provider, no span objects at all) unless
an OTLP endpoint is configured; then a `BatchSpanProcessor` exports over OTLP/HTTP from a background thread, so a
span costs the request no network wait. The SDK reads the other standard variables itself (`OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`).

Context flows through context variables: the HTTP middleware makes the request's span current for the request's
task (its parent taken from an incoming `traceparent`), the turn's task starts from a copy of that context and
`TracingTelemetry` makes the turn's span current there, so storage spans nest under the turn. The engine reports a
model call and a tool call once they have ended, with their times: their spans are recorded after the fact with
those start and end times. Storage spans are recorded only under a recording span (background loops such as lease
renewal make none).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

from backend.observability.telemetry import Generation, TurnFacts, TurnTelemetry

log = logging.getLogger("copilot.tracing")

TRACER_NAME = "copilot-chat"
CLOSE_SECONDS = 10.0
"""Shutdown waits this long at most for the last spans to be exported."""


class Tracing:
    """The app's tracer, or none. `enabled` is false when no endpoint is configured: callers then skip spans."""

    def __init__(self, provider: TracerProvider | None) -> None:
        self.provider = provider
        self.enabled = provider is not None
        self.tracer: trace.Tracer = provider.get_tracer(TRACER_NAME) if provider is not None else trace.NoOpTracer()

    @classmethod
    def off(cls) -> Tracing:
        return cls(None)

    @classmethod
    def to(cls, processor: SpanProcessor) -> Tracing:
        """Spans go to `processor` (tests hand an in-memory exporter's)."""
        provider = TracerProvider(resource=_resource(), shutdown_on_exit=False)
        provider.add_span_processor(processor)
        return cls(provider)

    @classmethod
    def otlp(cls, endpoint: str) -> Tracing:
        """Spans go to an OTLP/HTTP collector at `endpoint` (the full traces URL), batched in the background."""
        return cls.to(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))

    async def close(self) -> None:
        """Export what is still buffered (bounded by `CLOSE_SECONDS`) and stop the exporter's thread."""
        if self.provider is None:
            return
        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await asyncio.to_thread(self.provider.shutdown)
        except TimeoutError:
            log.warning("the trace collector did not take the last spans within %.0fs; they are dropped", CLOSE_SECONDS)

    def storage_span(self, system: str, operation: str, seconds: float, failed: bool) -> None:
        """A Redis command or Postgres statement that just ended, as a client span under the current span."""
        if not self.enabled or not trace.get_current_span().is_recording():
            return
        end = time.time_ns()
        span = self.tracer.start_span(
            f"{system} {operation}",
            kind=SpanKind.CLIENT,
            start_time=end - int(seconds * 1e9),
            attributes={"db.system.name": system, "db.operation.name": operation},
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end)


def _resource() -> Resource:
    # Resource.create merges OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME (which win over this default).
    return Resource.create({SERVICE_NAME: "copilot-chat"})


class TracingTelemetry:
    """A `Telemetry` sink: a `chat turn` span, current for the rest of the turn's task, with a child span per model
    call and per tool call."""

    def __init__(self, tracing: Tracing) -> None:
        self._tracer = tracing.tracer

    def turn_started(self, facts: TurnFacts) -> TurnTelemetry:
        return _TracedTurn(self._tracer, facts)

    async def flush(self) -> None:
        return None


class _TracedTurn:
    def __init__(self, tracer: trace.Tracer, facts: TurnFacts) -> None:
        self._tracer = tracer
        # The parent is the current span: the request that started the turn (its context was copied into the task).
        self._span = tracer.start_span(
            "chat turn",
            attributes={
                "copilot.turn_id": facts.turn_id,
                "copilot.session_id": str(facts.session_id),
                "enduser.id": facts.user_id,
                "gen_ai.request.model": facts.model,
                "copilot.prompt": f"{facts.prompt_name}@{facts.prompt_version}",
            },
        )
        self._context = trace.set_span_in_context(self._span)
        # Runs in the turn's own task (`start_turn`): what the turn does from here on nests under its span.
        self._token: Any = otel_context.attach(self._context)

    def generation(self, call: Generation) -> None:
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": call.model}
        if call.prompt_tokens is not None:
            attributes["gen_ai.usage.input_tokens"] = call.prompt_tokens
        if call.completion_tokens is not None:
            attributes["gen_ai.usage.output_tokens"] = call.completion_tokens
        if call.finish_reason:
            attributes["gen_ai.response.finish_reasons"] = [call.finish_reason]
        if call.first_token_at is not None:
            attributes["copilot.time_to_first_token_ms"] = round((call.first_token_at - call.started_at) * 1000, 1)
        span = self._tracer.start_span(
            f"chat {call.model}",
            context=self._context,
            kind=SpanKind.CLIENT,
            start_time=_ns(call.started_at),
            attributes=attributes,
        )
        if call.error:
            span.set_status(Status(StatusCode.ERROR, call.error))
        span.end(end_time=_ns(call.ended_at))

    def tool(self, *, name: str, call_id: str, ok: bool, duration_ms: float, error: str | None) -> None:
        end = time.time_ns()
        span = self._tracer.start_span(
            f"execute_tool {name}",
            context=self._context,
            start_time=end - int(duration_ms * 1e6),
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": name,
                "gen_ai.tool.call.id": call_id,
            },
        )
        if not ok:
            span.set_status(Status(StatusCode.ERROR))  # the error text may hold content: not exported
        span.end(end_time=end)

    def ended(self, *, status: str, error_class: str | None) -> None:
        self._span.set_attribute("copilot.outcome", status)
        if status not in ("completed", "cancelled"):
            self._span.set_status(Status(StatusCode.ERROR, error_class or status))
        self._span.end()
        try:
            otel_context.detach(self._token)
        except Exception:  # ended from another context than the one it started in: nothing to restore there
            log.debug("turn span context not detached", exc_info=True)


def _ns(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1_000_000_000)
