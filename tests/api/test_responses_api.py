"""Turns end to end with `COPILOT_LLM_API=responses`: the service speaks `POST /v1/responses` to the mock model over
HTTP, and the client sees the same stream, the same storage and the same error rules as over Chat Completions."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from backend.config import ModelPrice, Settings
from backend.devtools.mock_llm import MockLLMServer
from tests.api.test_chat_stream import ALICE, assert_well_formed, new_session, send, stored, wait_idle
from tests.conftest import LiveServer
from tests.sse import chunks, text_of, types


@pytest.fixture
def responses_settings(chat_settings: Settings) -> Settings:
    return chat_settings.model_copy(update={"llm_api": "responses"})


@pytest.fixture
async def chat(responses_settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, LiveServer]]:
    async with LiveServer(responses_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client, live


def model_calls(mock: MockLLMServer) -> list[dict[str, Any]]:
    """The streamed Responses calls the turns made (the title writer's call is not streamed)."""
    calls = [r for r in mock.requests if r.get("stream")]
    assert all("input" in r and "messages" not in r for r in calls)
    return calls


def data_errors(body: bytes) -> list[dict[str, Any]]:
    return [c["data"] for c in chunks(body) if c["type"] == "data-error"]


async def test_a_text_reply_over_the_responses_api(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, '[[mock:text content="Hello over responses"]]')
    assert_well_formed(body)
    assert text_of(body) == "Hello over responses"
    assert chunks(body)[-1]["finishReason"] == "stop"
    [call] = model_calls(mock_llm)
    assert call["store"] is False and call["input"][0]["role"] == "system"
    assert call["input"][-1] == {"role": "user", "content": '[[mock:text content="Hello over responses"]]'}
    rows = await stored(db, sid)
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", '[[mock:text content="Hello over responses"]]'),
        ("assistant", "Hello over responses"),
    ]


async def test_a_tool_turn_sends_the_results_back_as_function_call_outputs(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, '[[mock:tool name=calculate args={"expression": "6*7"}]]')
    assert_well_formed(body)
    seq = types(body)
    assert seq.count("start-step") == 2 and "tool-output-available" in seq
    assert "calculate returned" in text_of(body) and "42" in text_of(body)
    first, second = model_calls(mock_llm)
    assert [t["name"] for t in first["tools"]] == [t["name"] for t in second["tools"]]
    assert all(t["type"] == "function" and "function" not in t for t in first["tools"])
    call, output = second["input"][-2:]
    assert call["type"] == "function_call" and call["name"] == "calculate"
    assert (
        output["type"] == "function_call_output" and output["call_id"] == call["call_id"] and "42" in output["output"]
    )
    rows = await stored(db, sid)
    assert [r["role"] for r in rows] == ["user", "assistant", "tool", "assistant"]
    assert rows[2]["tool_call_id"] == call["call_id"]


async def test_parallel_tool_calls_over_the_responses_api(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    message = '[[mock:tool name=calculate args={"expression": "6*7"}]] [[mock:tool name=get_current_time args={}]]'
    _, body = await send(client, sid, message)
    assert_well_formed(body)
    started = [c["toolName"] for c in chunks(body) if c["type"] == "tool-input-start"]
    assert started == ["calculate", "get_current_time"]
    assert len([c for c in chunks(body) if c["type"] == "tool-output-available"]) == 2
    second = model_calls(mock_llm)[1]["input"]
    assert [i["type"] for i in second[-4:]] == [
        "function_call",
        "function_call",
        "function_call_output",
        "function_call_output",
    ]


async def test_reasoning_and_usage_over_the_responses_api(
    responses_settings: Settings, mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    settings = responses_settings.model_copy(
        update={
            "responses_reasoning_summary": "auto",
            "model_prices": {"mock-model": ModelPrice(input=2.0, output=8.0, cached_input=0.5)},
        }
    )
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        message = '[[mock:reasoning content="Six sevens"]] [[mock:usage cached=20]] [[mock:text content="It is 42"]]'
        _, body = await send(client, sid, message)
    assert_well_formed(body)
    seq = types(body)
    assert seq.index("reasoning-start") < seq.index("reasoning-end") < seq.index("text-start")
    assert "".join(c["delta"] for c in chunks(body) if c["type"] == "reasoning-delta") == "Six sevens"
    assert text_of(body) == "It is 42"
    metadata = chunks(body)[-1]["messageMetadata"]
    usage = metadata["usage"]
    assert (usage["reasoningTokens"], usage["cachedTokens"], usage["completionTokens"]) == (2, 20, 5)
    expected = ((usage["promptTokens"] - 20) * 2.0 + 20 * 0.5 + 5 * 8.0) / 1e6
    assert metadata["costUsd"] == pytest.approx(expected)
    assert model_calls(mock_llm)[0]["reasoning"] == {"summary": "auto"}
    row = await db.fetchrow(
        "SELECT content, reasoning, usage FROM chat_messages WHERE session_id = $1 AND role = 'assistant'",
        uuid.UUID(sid),
    )
    assert row is not None and (row["content"], row["reasoning"]) == ("It is 42", "Six sevens")
    assert row["usage"]["reasoning_tokens"] == 2 and row["usage"]["cached_tokens"] == 20


async def test_errors_before_the_first_chunk_are_retried(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    message = (
        "[[mock:rate_limit times=1 key=r retry_after=0]] [[mock:stream_error after=1 times=1 key=e]] "
        '[[mock:text content="made it"]]'
    )
    _, body = await send(client, sid, message)
    assert_well_formed(body)
    assert text_of(body) == "made it" and "error" not in types(body)
    assert len(model_calls(mock_llm)) == 3


async def test_a_failure_after_the_first_chunk_keeps_the_partial_text(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, "[[mock:text tokens=8]] [[mock:stream_error after=6 event=failed]]")
    assert_well_formed(body)
    assert text_of(body) == "Lorem ipsum dolor"
    assert data_errors(body) == [{"code": "provider_error", "retryable": True}]
    assert types(body)[-2:] == ["error", "finish"] and chunks(body)[-1]["finishReason"] == "error"
    assert len(model_calls(mock_llm)) == 1  # not retried: text had been streamed
    await wait_idle(client, sid)
    rows = await stored(db, sid)
    assert rows[-1]["role"] == "assistant" and rows[-1]["content"].startswith("Lorem ipsum dolor")


@pytest.mark.parametrize(
    ("marker", "code", "retryable"),
    [
        ("[[mock:region_block]]", "region_blocked", False),
        ("[[mock:incomplete reason=content_filter]]", "content_filtered", False),
        ("[[mock:stream_error after=1 code=408]]", "timeout", True),
        ("[[mock:server_error]]", "provider_error", True),
    ],
)
async def test_failures_carry_their_stable_code(
    chat: tuple[httpx.AsyncClient, LiveServer], marker: str, code: str, retryable: bool
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, marker)
    assert_well_formed(body)
    assert data_errors(body) == [{"code": code, "retryable": retryable}]
    assert types(body)[-3:] == ["data-error", "error", "finish"]


async def test_a_context_overflow_compacts_and_retries_the_step(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, '[[mock:context_length times=1 key=c]] [[mock:text content="fits now"]]')
    assert_well_formed(body)
    assert text_of(body) == "fits now" and "error" not in types(body)
    assert len(model_calls(mock_llm)) == 2  # refused, then the retried step


async def test_the_title_is_written_over_the_responses_api(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client, title=None)
    await send(client, sid, "Plan a trip to Rome. Then more.")
    title = None
    for _ in range(100):
        title = (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()["title"]
        if title:
            break
        await asyncio.sleep(0.05)
    assert title == "Plan a trip to Rome"
    [title_call] = [r for r in mock_llm.requests if not r.get("stream")]
    assert "input" in title_call and title_call["max_output_tokens"] >= 16


async def test_the_session_detail_and_usage_report_work_the_same(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    sid = await new_session(client)
    await send(client, sid, "[[mock:text tokens=3]]")
    await wait_idle(client, sid)
    report = (await client.get(f"/api/chat/sessions/{sid}/usage", headers=ALICE)).json()
    assert report["completion_tokens"] == 3 and report["by_model"][0]["model"] == "mock-model"
