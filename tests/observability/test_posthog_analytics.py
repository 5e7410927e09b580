"""Turn analytics with the real `posthog` SDK, batching in the background to a loopback PostHog."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from backend.observability.posthog_analytics import PostHogTelemetry, connect_posthog
from backend.observability.telemetry import Generation, TurnFacts, start_turn
from tests.observability.fakes import FakePostHog

SECRET = "my bank password is hunter2"


@pytest.fixture
def posthog() -> Iterator[FakePostHog]:
    with FakePostHog() as fake:
        yield fake


def telemetry_for(fake: FakePostHog, *, capture_content: bool = False, **options: Any) -> PostHogTelemetry:
    return PostHogTelemetry(connect_posthog(fake.api_key, fake.url, **options), capture_content=capture_content)


def run_turn(telemetry: PostHogTelemetry, session_id: uuid.UUID, *, status: str = "completed") -> None:
    facts = TurnFacts("turn-1", session_id, "alice", "copilot-system", "4", "gpt-4o-mini", len(SECRET), SECRET)
    turn = start_turn(telemetry, facts)
    now = time.time()
    turn.generation(Generation("gpt-4o-mini", now, now + 0.2, now + 0.05, 100, 20, "tool_calls", None, (), ""))
    turn.tool(name="calculate", call_id="c1", ok=True, duration_ms=12.5, error=None)
    turn.tool(name="lookup", call_id="c2", ok=False, duration_ms=3.0, error=f"no account for {SECRET}")
    turn.generation(Generation("gpt-4o-mini", now + 0.3, now + 0.5, now + 0.35, 150, 10, "stop", None, (), SECRET))
    turn.ended(status=status, error_class="model_error" if status == "failed" else None)


def by_event(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        grouped.setdefault(e["event"], []).append(e)
    return grouped


async def test_a_turn_sends_its_events_in_a_batch_without_content(posthog: FakePostHog) -> None:
    telemetry = telemetry_for(posthog)
    session_id = uuid.uuid4()
    run_turn(telemetry, session_id)
    assert posthog.requests == []  # queued, not sent inline
    await telemetry.close()

    batches = posthog.recorded(lambda r: r.path == "/batch/")
    assert len(batches) == 1  # one batch for the whole turn
    events = by_event(posthog.events())
    assert sorted(events) == ["chat_message_sent", "chat_tool_called", "chat_turn_completed"]
    for e in posthog.events():
        assert e["distinct_id"] == "alice"
        assert e["properties"]["session_id"] == str(session_id)
        assert e["properties"]["turn_id"] == "turn-1"
        assert SECRET not in str(e)

    (sent,) = events["chat_message_sent"]
    assert sent["properties"]["message_chars"] == len(SECRET)
    assert sent["properties"]["prompt_version"] == "4"
    assert "message" not in sent["properties"]
    tools = {e["properties"]["tool"]: e["properties"] for e in events["chat_tool_called"]}
    assert tools["calculate"]["ok"] is True and tools["calculate"]["duration_ms"] == 12.5
    assert tools["lookup"]["ok"] is False and "error" not in tools["lookup"]

    (done,) = events["chat_turn_completed"]
    p = done["properties"]
    assert p["outcome"] == "completed"
    assert (p["prompt_tokens"], p["completion_tokens"], p["total_tokens"]) == (250, 30, 280)
    assert (p["tool_count"], p["model_calls"]) == (2, 2)
    assert p["time_to_first_token_ms"] is not None and p["duration_ms"] >= 0


async def test_content_only_when_enabled(posthog: FakePostHog) -> None:
    telemetry = telemetry_for(posthog, capture_content=True)
    run_turn(telemetry, uuid.uuid4())
    await telemetry.close()
    events = by_event(posthog.events())
    assert events["chat_message_sent"][0]["properties"]["message"] == SECRET
    failed_tool = next(e for e in events["chat_tool_called"] if not e["properties"]["ok"])
    assert failed_tool["properties"]["error"] == f"no account for {SECRET}"


async def test_failed_turn(posthog: FakePostHog) -> None:
    telemetry = telemetry_for(posthog)
    run_turn(telemetry, uuid.uuid4(), status="failed")
    await telemetry.flush()
    events = by_event(posthog.events())
    assert "chat_turn_completed" not in events
    (failed,) = events["chat_turn_failed"]
    assert failed["properties"]["error_class"] == "model_error"
    assert failed["properties"]["outcome"] == "failed"
    await telemetry.close()


async def test_posthog_down_costs_the_turn_nothing(posthog: FakePostHog) -> None:
    posthog.down = True
    telemetry = telemetry_for(posthog, max_retries=1)
    began = time.perf_counter()
    for _ in range(50):
        run_turn(telemetry, uuid.uuid4())
    assert time.perf_counter() - began < 0.5  # only queue writes on the turn's side
    await telemetry.close()
    assert posthog.recorded(lambda r: r.path == "/batch/")  # it did try
    assert posthog.events() == []
