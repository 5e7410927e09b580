"""The context window end to end: rolling summaries, trimming, and provider overflow, through the mock model."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from backend.chat.tokens import TokenCounter
from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from backend.store.models import NewMessage
from tests.api.test_chat_stream import new_session, send
from tests.conftest import LiveServer
from tests.protocol_check import check_body
from tests.sse import chunks, text_of

COUNTER = TokenCounter("mock-model")


@pytest.fixture
def small_window(chat_settings: Settings) -> Settings:
    return chat_settings.model_copy(
        update={
            "context_window_tokens": 3000,
            "reserved_output_tokens": 200,
            "compaction_soft_ratio": 0.5,
            "compaction_hard_ratio": 0.7,
            "compaction_target_ratio": 0.3,
            "summary_max_input_tokens": 1500,
        }
    )


def summariser_calls(mock: MockLLMServer) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in mock.requests if not r.get("stream") and "<new_messages>" in str(r["messages"])]


def model_calls(mock: MockLLMServer) -> list[dict]:  # type: ignore[type-arg]
    return [r for r in mock.requests if r.get("stream")]


async def test_a_growing_session_is_summarised_and_keeps_fitting(
    small_window: Settings, mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    async with LiveServer(small_window) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        for i in range(12):
            _, body = await send(client, sid, f"question {i} [[mock:text tokens=150]]")
            assert check_body(body) == []
            assert text_of(body)
    row = await db.fetchrow(
        "SELECT summary, summary_through, live_tokens FROM chat_sessions WHERE id = $1", uuid.UUID(sid)
    )
    assert row["summary"] and row["summary_through"] > 0
    live_sum = await db.fetchval(
        "SELECT coalesce(sum(token_count), 0) FROM chat_messages WHERE session_id = $1 AND sequence > $2",
        uuid.UUID(sid),
        row["summary_through"],
    )
    assert row["live_tokens"] == live_sum
    # The summariser read the previous summary plus only the newly folded messages, never the newest question.
    calls = summariser_calls(mock_llm)
    assert calls
    for call in calls:
        content = call["messages"][-1]["content"]
        assert "<previous_summary>" in content and "<new_messages>" in content
        assert COUNTER.count_messages(call["messages"]) <= small_window.summary_max_input_tokens + 2 * 1024 + 300
    folded_questions = [q for call in calls for q in range(12) if f"question {q} " in call["messages"][-1]["content"]]
    assert len(folded_questions) == len(set(folded_questions))  # each message summarised at most once
    # Every model call after the first summary carried it as context, and every prompt fit the window.
    later = model_calls(mock_llm)[-1]
    assert any("<conversation_summary>" in str(m.get("content")) for m in later["messages"])
    assert later["messages"][0]["role"] == "system"
    limit = (small_window.context_window_tokens - small_window.reserved_output_tokens) * 0.95
    for call in model_calls(mock_llm):
        assert COUNTER.count_messages(call["messages"]) <= limit


async def test_a_large_message_compacts_inline_and_the_ui_sees_it(
    small_window: Settings, mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    async with LiveServer(small_window) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        for i in range(3):
            await send(client, sid, f"short {i} [[mock:text tokens=60]]")
        assert await db.fetchval("SELECT summary FROM chat_sessions WHERE id = $1", uuid.UUID(sid)) is None
        big = " ".join(f"word{i}" for i in range(700))  # ~1400 tokens: over the hard threshold
        _, body = await send(client, sid, f'{big} [[mock:text content="done"]]')
    assert check_body(body) == []
    statuses = [c for c in chunks(body) if c["type"] == "data-compaction"]
    assert [s["data"]["state"] for s in statuses] == ["running", "done"]
    assert all(s["transient"] for s in statuses)
    assert text_of(body) == "done"
    assert await db.fetchval("SELECT summary_through FROM chat_sessions WHERE id = $1", uuid.UUID(sid)) == 6


async def test_a_5000_message_session_keeps_answering(
    small_window: Settings, mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    async with LiveServer(small_window) as live, httpx.AsyncClient(base_url=live.url, timeout=60) as client:
        sid = await new_session(client)
        store = live.app.state.runtime.sessions
        for start in range(0, 5000, 500):
            batch = [
                NewMessage("user" if i % 2 == 0 else "assistant", f"message {start + i}", token_count=12)
                for i in range(500)
            ]
            await store.append(uuid.UUID(sid), batch)
        _, body = await send(client, sid, '[[mock:text content="still here"]]')
    assert text_of(body) == "still here"
    assert chunks(body)[-1]["finishReason"] == "stop"
    limit = (small_window.context_window_tokens - small_window.reserved_output_tokens) * 0.95
    assert COUNTER.count_messages(model_calls(mock_llm)[-1]["messages"]) <= limit


async def test_many_short_messages_are_folded_in_the_background_down_to_half_the_bound(
    small_window: Settings, mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    bounded = small_window.model_copy(update={"context_max_live_messages": 40})
    async with LiveServer(bounded) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        store = live.app.state.runtime.sessions
        batch = [NewMessage("user" if i % 2 == 0 else "assistant", f"m{i}", token_count=4) for i in range(60)]
        await store.append(uuid.UUID(sid), batch)  # 240 tokens: far below every token threshold
        _, body = await send(client, sid, '[[mock:text content="first"]]')
        assert text_of(body) == "first"
        assert len(model_calls(mock_llm)[-1]["messages"]) == 1 + 61  # the system prompt and every message
        # After the turn the summary takes over all but the newest 20 (whole turns: the cut is before a user message).
        for _ in range(100):
            through = await db.fetchval("SELECT summary_through FROM chat_sessions WHERE id = $1", uuid.UUID(sid))
            if through:
                break
            await asyncio.sleep(0.05)
        assert through == 62 - 20
        _, body = await send(client, sid, '[[mock:text content="second"]]')
    assert text_of(body) == "second"
    sent = model_calls(mock_llm)[-1]["messages"]
    assert sent[1]["content"].startswith("<conversation_summary>")
    assert len(sent) == 2 + 20 + 1  # system, summary, the 20 live messages, the new question
    assert len(summariser_calls(mock_llm)) == 1


async def test_a_failing_summariser_trims_this_call_instead(
    small_window: Settings, mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    # The summariser's request quotes the questions, so their pace is its own: 150 tokens at 1 ms come after
    # 150 ms, far past its timeout (the mock once answered a summary within 1 ms, before the timeout fired).
    no_summaries = small_window.model_copy(update={"summary_timeout_seconds": 0.02})
    async with LiveServer(no_summaries) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        for i in range(10):
            _, body = await send(client, sid, f"q{i} [[mock:text tokens=150 delay_ms=1]]")
            assert check_body(body) == []
            assert chunks(body)[-1]["finishReason"] == "stop"
    assert summariser_calls(mock_llm)  # asked, and too late every time
    assert await db.fetchval("SELECT summary FROM chat_sessions WHERE id = $1", uuid.UUID(sid)) is None
    limit = (small_window.context_window_tokens - small_window.reserved_output_tokens) * 0.95
    last = model_calls(mock_llm)[-1]["messages"]
    assert COUNTER.count_messages(last) <= limit
    assert "q9" in last[-1]["content"]  # the newest question is always kept


async def test_provider_overflow_forces_one_compaction_and_one_retry(
    chat_settings: Settings, mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    async with LiveServer(chat_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        for i in range(3):
            await send(client, sid, f"earlier {i} [[mock:text tokens=30]]")
        _, body = await send(client, sid, "[[mock:context_length times=1 key=overflow]] now")
    assert check_body(body) == []
    assert "error" not in [c["type"] for c in chunks(body)]
    assert chunks(body)[-1]["finishReason"] == "stop"
    assert summariser_calls(mock_llm)  # the forced compaction ran
    summary = await db.fetchval("SELECT summary_through FROM chat_sessions WHERE id = $1", uuid.UUID(sid))
    assert summary > 0


async def test_overflow_twice_is_a_clear_error(chat_settings: Settings, db: asyncpg.Connection) -> None:
    async with LiveServer(chat_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await send(client, sid, "[[mock:context_length]]")
    assert check_body(body) == []
    error = next(c for c in chunks(body) if c["type"] == "error")
    assert "too long" in error["errorText"]


async def test_oversized_tool_output_is_capped_at_insert(chat_settings: Settings, db: asyncpg.Connection) -> None:
    capped = chat_settings.model_copy(update={"max_tool_output_tokens": 64})
    async with LiveServer(capped) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        await send(
            client, sid, '[[mock:tool name=search_help_docs args={"query": "session stream tool", "limit": 10}]]'
        )
    tool = await db.fetchrow(
        "SELECT content, token_count FROM chat_messages WHERE session_id = $1 AND role = 'tool'", uuid.UUID(sid)
    )
    assert "omitted" in tool["content"]
    assert COUNTER.count_text(tool["content"]) <= 64
