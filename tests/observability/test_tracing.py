"""OpenTelemetry traces: the turn sink against the SDK's in-memory exporter, then the whole service exporting over
OTLP/HTTP to a loopback collector: one trace from the caller's `traceparent` through the request, the turn, its
model and tool calls, down to Redis and Postgres."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from backend.config import Settings
from backend.observability.telemetry import Generation, TurnFacts, start_turn
from backend.observability.tracing import Tracing, TracingTelemetry
from tests.api.test_chat_stream import ALICE, new_session, wait_idle
from tests.conftest import LiveServer
from tests.observability.fakes import FakeCollector, Span
from tests.sse import read_stream

FACTS = TurnFacts("turn-1", uuid.UUID(int=7), "alice", "copilot-system", "builtin", "gpt-4o-mini", 5, "hello")


def test_a_turn_span_is_current_in_its_task_and_parents_its_model_and_tool_calls() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing.to(SimpleSpanProcessor(exporter))
    request = tracing.tracer.start_span("POST /stream")
    with trace.use_span(request, end_on_exit=True):
        turn = start_turn(TracingTelemetry(tracing), FACTS)
        inside = trace.get_current_span()
        t0 = time.time()
        turn.generation(Generation("gpt-4o-mini", t0 - 2, t0 - 1, t0 - 1.5, 120, 30, "tool_calls", None))
        turn.tool(name="calculate", call_id="c1", ok=False, duration_ms=250, error="division by zero")
        turn.generation(Generation("gpt-4o-mini", t0 - 0.5, t0, None, None, None, None, "the model provider failed"))
        turn.ended(status="failed", error_class="server_error")
        assert trace.get_current_span() is request  # the turn's context is gone with it
    finished = exporter.get_finished_spans()
    (turn_span,) = [s for s in finished if s.name == "chat turn"]
    (tool,) = [s for s in finished if s.name == "execute_tool calculate"]
    ok_call, failed_call = [s for s in finished if s.name == "chat gpt-4o-mini"]
    assert inside.get_span_context().span_id == turn_span.context.span_id
    assert turn_span.parent is not None and turn_span.parent.span_id == request.get_span_context().span_id
    assert turn_span.attributes is not None and turn_span.attributes["copilot.turn_id"] == "turn-1"
    assert not turn_span.status.is_ok and turn_span.attributes["copilot.outcome"] == "failed"
    assert ok_call.status.is_ok and not failed_call.status.is_ok
    assert ok_call.parent is not None and ok_call.parent.span_id == turn_span.context.span_id
    assert ok_call.attributes is not None and ok_call.attributes["gen_ai.usage.input_tokens"] == 120
    assert ok_call.end_time is not None and ok_call.start_time is not None
    assert (ok_call.end_time - ok_call.start_time) == pytest.approx(1e9, rel=1e-3)  # its own start and end
    assert failed_call.parent is not None and failed_call.parent.span_id == turn_span.context.span_id
    assert tool.parent is not None and tool.parent.span_id == turn_span.context.span_id
    assert not tool.status.is_ok and "division" not in str(tool.status.description)  # no content exported


def test_tracing_is_off_without_an_endpoint() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.otlp_traces_endpoint is None
    on = Settings(_env_file=None, OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/")  # type: ignore[call-arg]
    assert on.otlp_traces_endpoint == "http://collector:4318/v1/traces"
    both = on.model_copy(update={"otel_exporter_otlp_traces_endpoint": "http://other:4318/custom"})
    assert both.otlp_traces_endpoint == "http://other:4318/custom"
    assert on.model_copy(update={"otel_sdk_disabled": True}).otlp_traces_endpoint is None


@pytest.fixture
def collector() -> Iterator[FakeCollector]:
    with FakeCollector() as fake:
        yield fake


async def test_a_turn_reaches_the_collector_as_one_trace_of_parent_and_child_spans(
    chat_settings: Settings, collector: FakeCollector
) -> None:
    settings = chat_settings.model_copy(update={"otel_exporter_otlp_endpoint": collector.url})
    caller_trace, caller_span = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        assert (await client.get("/health/ready")).status_code == 200  # probes make no spans
        sid = await new_session(client)
        _, body = await read_stream(
            client,
            "POST",
            f"/api/chat/sessions/{sid}/stream",
            json={"message": '[[mock:tool name=calculate args={"expression": "6*7"}]]'},
            headers={**ALICE, "traceparent": f"00-{caller_trace}-{caller_span}-01"},
        )
        assert b"42" in body
        await wait_idle(client, sid)
        await asyncio.sleep(0.1)
    # closing the app exported what was still batched
    spans = collector.spans()
    assert spans, "nothing reached the collector"
    assert all(s.resource.get("service.name") == "copilot-chat" for s in spans)
    assert not [s for s in spans if s.name.startswith("GET /health")]
    ours = [s for s in spans if s.trace_id == caller_trace]
    by_name: dict[str, list[Span]] = {}
    for s in ours:
        by_name.setdefault(s.name, []).append(s)
    (request,) = by_name["POST /api/chat/sessions/{session_id}/stream"]
    assert request.parent_span_id == caller_span  # joined the caller's trace
    assert request.attributes["http.response.status_code"] == 200
    (turn,) = by_name["chat turn"]
    assert turn.parent_span_id == request.span_id
    assert turn.attributes["copilot.session_id"] == sid and turn.attributes["copilot.outcome"] == "completed"
    model_calls = by_name["chat mock-model"]
    assert len(model_calls) == 2 and {s.parent_span_id for s in model_calls} == {turn.span_id}
    (tool,) = by_name["execute_tool calculate"]
    assert tool.parent_span_id == turn.span_id
    storage = [s for s in ours if s.name.startswith(("redis ", "postgresql "))]
    assert {s.parent_span_id for s in storage} <= {request.span_id, turn.span_id}
    assert any(s.parent_span_id == turn.span_id and s.name.startswith("postgresql ") for s in storage)
    assert any(s.parent_span_id == request.span_id and s.name.startswith("redis ") for s in storage)
    assert turn.start_ns >= request.start_ns and all(c.start_ns >= turn.start_ns for c in model_calls)
