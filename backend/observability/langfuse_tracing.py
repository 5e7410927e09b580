"""Turns as Langfuse traces: one trace per turn, a generation per model call, a tool span per tool call.

The Langfuse SDK (v3+) is OpenTelemetry-based: observations are OTel spans that a batch processor exports in the
background (OTLP over HTTP to `/api/public/otel/v1/traces`), so recording one costs the turn no network wait. The
turn engine reports a model call once it has ended, with its start and first-token times; the SDK's
`start_observation` always starts "now", so the spans are started here with an explicit start time on this
module's own tracer and then dressed with the SDK's observation classes (`LangfuseGeneration`, ...), which write
the Langfuse attributes (model, usage, input/output, level).

The client gets a `TracerProvider` of its own instead of installing one as the process's global provider, so
nothing else in the process is traced to Langfuse by accident, and several apps (tests) can coexist. Langfuse
keeps one client per public key per process: two apps with the same key share the first one's settings.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from langfuse import Langfuse, LangfuseGeneration, LangfuseOtelSpanAttributes, LangfuseSpan, LangfuseTool
from langfuse.span_filter import is_default_export_span
from langfuse.types import SpanLevel
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider

from backend.observability.telemetry import Generation, TurnFacts, TurnTelemetry

log = logging.getLogger("copilot.langfuse")

TRACER_NAME = "copilot-chat"
TRACE_NAME = "chat-turn"
TIMEOUT_SECONDS = 5
"""HTTP timeout of the SDK's requests (prompt fetches and trace exports)."""
CLOSE_SECONDS = 10.0
"""Shutdown waits this long at most for the last traces to be sent."""


def _exported(span: ReadableSpan) -> bool:
    scope = span.instrumentation_scope
    return (scope is not None and scope.name == TRACER_NAME) or is_default_export_span(span)


@dataclass
class LangfuseConnection:
    """The process's Langfuse client (prompts and tracing) and the tracer provider its spans go through."""

    client: Langfuse
    tracer_provider: TracerProvider

    @classmethod
    def open(
        cls, *, public_key: str, secret_key: str, host: str | None, environment: str | None = None
    ) -> LangfuseConnection:
        """A client for the project of `public_key`. No request is made until a prompt is fetched or a trace sent."""
        # No exit hook of its own: `close` shuts it down, and the SDK's exit hook flushes it if close never ran.
        provider = TracerProvider(resource=Resource.create({"service.name": "copilot-chat"}), shutdown_on_exit=False)
        client = Langfuse(
            public_key=public_key,
            secret_key=secret_key,
            # base_url= wins over the SDK's LANGFUSE_BASE_URL env lookup: Settings is the one source of config.
            base_url=host or "https://cloud.langfuse.com",
            timeout=TIMEOUT_SECONDS,
            environment=environment,
            tracer_provider=provider,
            should_export_span=_exported,
        )
        return cls(client, provider)

    async def close(self) -> None:
        """Send what is still buffered (bounded by `CLOSE_SECONDS`) and stop the SDK's threads."""

        def shutdown() -> None:
            self.client.shutdown()
            self.tracer_provider.shutdown()

        try:
            async with asyncio.timeout(CLOSE_SECONDS):
                await asyncio.to_thread(shutdown)
        except TimeoutError:
            log.warning("Langfuse did not take the last traces within %.0fs; they are dropped", CLOSE_SECONDS)


class LangfuseTelemetry:
    """A `Telemetry` sink: each turn becomes a Langfuse trace with the session and user it belongs to."""

    def __init__(self, connection: LangfuseConnection) -> None:
        self._client = connection.client
        self._tracer = connection.tracer_provider.get_tracer(TRACER_NAME)

    def turn_started(self, facts: TurnFacts) -> TurnTelemetry:
        return _LangfuseTurn(self._client, self._tracer, facts)

    async def flush(self) -> None:
        await asyncio.to_thread(self._client.flush)


class _LangfuseTurn:
    def __init__(self, client: Langfuse, tracer: trace.Tracer, facts: TurnFacts) -> None:
        self._client = client
        self._tracer = tracer
        # Set on every span, as the SDK's `propagate_attributes` would: Langfuse filters and aggregates by them.
        self._trace_attributes: dict[str, Any] = {
            LangfuseOtelSpanAttributes.TRACE_NAME: TRACE_NAME,
            LangfuseOtelSpanAttributes.TRACE_SESSION_ID: str(facts.session_id),
            LangfuseOtelSpanAttributes.TRACE_USER_ID: facts.user_id,
        }
        self._prompt_link: dict[str, Any] = {}
        if facts.prompt_version.isdigit():  # a Langfuse version; the built-in prompt is not linked
            self._prompt_link = {
                LangfuseOtelSpanAttributes.OBSERVATION_PROMPT_NAME: facts.prompt_name,
                LangfuseOtelSpanAttributes.OBSERVATION_PROMPT_VERSION: int(facts.prompt_version),
            }
        root = tracer.start_span(TRACE_NAME, context=Context(), attributes=self._trace_attributes)
        self._root = LangfuseSpan(
            otel_span=root,
            langfuse_client=client,
            input=facts.message_text,
            metadata={
                "turn_id": facts.turn_id,
                "prompt_name": facts.prompt_name,
                "prompt_version": facts.prompt_version,
                "model": facts.model,
            },
        )
        self._parent = trace.set_span_in_context(root, Context())
        self._output: str | None = None

    def generation(self, call: Generation) -> None:
        span = self._tracer.start_span(
            "model-call",
            context=self._parent,
            start_time=_ns(call.started_at),
            attributes=self._trace_attributes | self._prompt_link,
        )
        LangfuseGeneration(
            otel_span=span,
            langfuse_client=self._client,
            model=call.model,
            input=list(call.input_messages),
            output=call.output_text or None,
            usage_details=_usage(call),
            completion_start_time=datetime.fromtimestamp(call.first_token_at, UTC) if call.first_token_at else None,
            metadata={"finish_reason": call.finish_reason} if call.finish_reason else None,
            level="ERROR" if call.error else None,
            status_message=call.error,
        )
        span.end(end_time=_ns(call.ended_at))
        if call.output_text:
            self._output = call.output_text

    def tool(self, *, name: str, call_id: str, ok: bool, duration_ms: float, error: str | None) -> None:
        end = datetime.now(UTC).timestamp()
        span = self._tracer.start_span(
            name, context=self._parent, start_time=_ns(end - duration_ms / 1000), attributes=self._trace_attributes
        )
        LangfuseTool(
            otel_span=span,
            langfuse_client=self._client,
            metadata={"call_id": call_id},
            level=None if ok else "ERROR",
            status_message=error,
        )
        span.end(end_time=_ns(end))

    def ended(self, *, status: str, error_class: str | None) -> None:
        level: SpanLevel | None = "ERROR"
        if status in ("completed", "cancelled"):
            level = None if status == "completed" else "WARNING"
        self._root.update(
            output=self._output,
            metadata={"status": status, "error_class": error_class} if error_class else {"status": status},
            level=level,
            status_message=error_class or (None if status == "completed" else status),
        )
        self._root.end()


def _ns(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1_000_000_000)


def _usage(call: Generation) -> dict[str, int] | None:
    if call.prompt_tokens is None and call.completion_tokens is None:
        return None
    usage = {"input": call.prompt_tokens or 0, "output": call.completion_tokens or 0}
    usage["total"] = usage["input"] + usage["output"]
    return usage
