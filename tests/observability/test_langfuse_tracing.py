"""Turn traces with the real `langfuse` SDK, exported over OTLP to a loopback Langfuse and decoded there."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from backend.observability.langfuse_tracing import LangfuseConnection, LangfuseTelemetry
from backend.observability.telemetry import Generation, TurnFacts, start_turn
from tests.observability.fakes import FakeLangfuse, Span


@pytest.fixture
def langfuse() -> Iterator[FakeLangfuse]:
    with FakeLangfuse() as fake:
        yield fake


@pytest.fixture
async def connection(langfuse: FakeLangfuse) -> AsyncIterator[LangfuseConnection]:
    conn = LangfuseConnection.open(
        public_key=langfuse.public_key, secret_key=langfuse.secret_key, host=langfuse.url, environment="development"
    )
    yield conn
    await conn.close()


def facts(session_id: uuid.UUID, *, version: str = "3") -> TurnFacts:
    return TurnFacts(
        turn_id="turn-1",
        session_id=session_id,
        user_id="alice",
        prompt_name="copilot/system",
        prompt_version=version,
        model="gpt-4o-mini",
        message_chars=5,
        message_text="hello",
    )


def by_type(spans: list[Span], kind: str) -> list[Span]:
    return [s for s in spans if s.type == kind]


async def test_a_turn_is_a_trace_with_session_user_prompt_version_and_usage(
    langfuse: FakeLangfuse, connection: LangfuseConnection
) -> None:
    telemetry = LangfuseTelemetry(connection)
    session_id = uuid.uuid4()
    turn = start_turn(telemetry, facts(session_id))
    t0 = time.time()
    messages = [{"role": "system", "content": "You are..."}, {"role": "user", "content": "hello"}]
    turn.generation(
        Generation(
            model="gpt-4o-mini",
            started_at=t0 - 1.5,
            ended_at=t0 - 0.5,
            first_token_at=t0 - 1.2,
            prompt_tokens=120,
            completion_tokens=30,
            finish_reason="tool_calls",
            error=None,
            input_messages=messages,
            output_text="",
        )
    )
    turn.tool(name="calculate", call_id="call_1", ok=True, duration_ms=40.0, error=None)
    turn.generation(
        Generation("gpt-4o-mini", t0 - 0.4, t0, t0 - 0.3, 200, 12, "stop", None, messages, "The answer is 42.")
    )
    turn.ended(status="completed", error_class=None)
    await telemetry.flush()

    spans = langfuse.spans()
    (root,) = [s for s in spans if s.parent_span_id is None]
    generations = by_type(spans, "generation")
    (tool,) = by_type(spans, "tool")
    assert len(generations) == 2 and len(spans) == 4
    assert {s.trace_id for s in spans} == {root.trace_id}
    assert all(s.parent_span_id == root.span_id for s in [*generations, tool])
    for span in spans:  # trace attributes on every observation, as `propagate_attributes` would set them
        assert span.attributes["session.id"] == str(session_id)
        assert span.attributes["user.id"] == "alice"
        assert span.attributes["langfuse.trace.name"] == "chat-turn"
    assert root.attributes["langfuse.observation.input"] == "hello"  # strings go as they are, the rest as JSON
    assert root.attributes["langfuse.observation.output"] == "The answer is 42."
    assert root.json("langfuse.observation.metadata.prompt_version") == "3"

    first = min(generations, key=lambda s: s.start_ns)
    assert first.attributes["langfuse.observation.model.name"] == "gpt-4o-mini"
    assert first.attributes["langfuse.observation.prompt.name"] == "copilot/system"
    assert first.attributes["langfuse.observation.prompt.version"] == 3
    assert first.json("langfuse.observation.usage_details") == {"input": 120, "output": 30, "total": 150}
    assert first.json("langfuse.observation.input") == messages
    assert abs((first.end_ns - first.start_ns) / 1e9 - 1.0) < 0.01  # latency: the call's own start and end
    assert "langfuse.observation.completion_start_time" in first.attributes
    assert tool.name == "calculate"
    assert abs((tool.end_ns - tool.start_ns) / 1e6 - 40) < 5

    exports = langfuse.recorded(lambda r: r.path == "/api/public/otel/v1/traces")
    assert exports[0].headers["content-encoding"] == "gzip"
    assert exports[0].headers["authorization"].startswith("Basic ")


async def test_failed_turn_and_builtin_prompt(langfuse: FakeLangfuse, connection: LangfuseConnection) -> None:
    telemetry = LangfuseTelemetry(connection)
    turn = start_turn(telemetry, facts(uuid.uuid4(), version="builtin"))
    now = time.time()
    turn.generation(Generation("m", now - 0.2, now, None, None, None, None, "upstream 500", (), ""))
    turn.tool(name="lookup", call_id="c", ok=False, duration_ms=3.0, error="boom")
    turn.ended(status="failed", error_class="model_error")
    await telemetry.flush()

    spans = langfuse.spans()
    (root,) = [s for s in spans if s.parent_span_id is None]
    (generation,) = by_type(spans, "generation")
    (tool,) = by_type(spans, "tool")
    assert root.attributes["langfuse.observation.level"] == "ERROR"
    assert root.attributes["langfuse.observation.status_message"] == "model_error"
    assert generation.attributes["langfuse.observation.level"] == "ERROR"
    assert "langfuse.observation.prompt.name" not in generation.attributes  # the built-in prompt is not linked
    assert "langfuse.observation.usage_details" not in generation.attributes
    assert tool.attributes["langfuse.observation.level"] == "ERROR"


async def test_langfuse_down_costs_the_turn_nothing(langfuse: FakeLangfuse, connection: LangfuseConnection) -> None:
    langfuse.down = True
    telemetry = LangfuseTelemetry(connection)
    began = time.perf_counter()
    for i in range(20):
        turn = start_turn(telemetry, facts(uuid.uuid4()))
        now = time.time()
        turn.generation(Generation("m", now - 0.1, now, now - 0.05, 10, 5, "stop", None, (), f"reply {i}"))
        turn.ended(status="completed", error_class=None)
    assert time.perf_counter() - began < 0.5  # nothing waited on the network
    assert langfuse.spans() == []
