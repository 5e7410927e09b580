"""Reasoning streams and usage per turn, end to end: the mock model streams reasoning and reports usage over HTTP;
the turn streams reasoning parts and ends with usage metadata; Postgres keeps both with the assistant message."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest

from backend.config import ModelPrice, Settings
from backend.devtools.mock_llm import MockLLMServer
from tests.api.test_chat_stream import ALICE, assert_well_formed, new_session, send, turn_calls, wait_idle
from tests.conftest import LiveServer, auth
from tests.sse import chunks, text_of, types

PRICES = {"mock-model": ModelPrice(input=2.0, output=8.0, cached_input=0.5)}


def reasoning_of(body: bytes) -> str:
    return "".join(c["delta"] for c in chunks(body) if c["type"] == "reasoning-delta")


async def assistant_rows(db: asyncpg.Connection, sid: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT content, reasoning, model, usage FROM chat_messages WHERE session_id = $1 AND role = 'assistant' "
        "ORDER BY sequence",
        uuid.UUID(sid),
    )


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_streams_as_reasoning_parts_and_is_stored(
    field: str, chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    message = f'[[mock:reasoning content="Six times seven is 42" field={field}]] [[mock:text content="It is 42"]]'
    _, body = await send(client, sid, message)
    assert_well_formed(body)
    seq = types(body)
    assert seq[:3] == ["start", "start-step", "reasoning-start"]
    assert seq.count("reasoning-start") == seq.count("reasoning-end") == 1
    assert seq.index("reasoning-end") < seq.index("text-start")
    assert reasoning_of(body) == "Six times seven is 42"
    assert text_of(body) == "It is 42"
    [row] = await assistant_rows(db, sid)
    assert (row["content"], row["reasoning"], row["model"]) == ("It is 42", "Six times seven is 42", "mock-model")
    detail = (await client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()
    assert detail["messages"][-1]["reasoning"] == "Six times seven is 42"
    assert detail["messages"][-1]["usage"]["completion_tokens"] > 0


async def test_reasoning_is_not_sent_back_to_the_model(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    await send(client, sid, '[[mock:reasoning content="secret thoughts here"]] [[mock:text content="Answer"]]')
    await wait_idle(client, sid)
    await send(client, sid, '[[mock:text content="Again"]]')
    last = turn_calls(mock_llm)[-1]["messages"]
    assistants = [m for m in last if m["role"] == "assistant"]
    assert assistants == [{"role": "assistant", "content": "Answer"}]  # no reasoning field, no reasoning text


async def test_a_reply_of_only_reasoning_is_stored_and_not_sent_back(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, '[[mock:reasoning content="only thinking"]] [[mock:text content=""]]')
    assert_well_formed(body)
    assert reasoning_of(body) == "only thinking"
    [row] = await assistant_rows(db, sid)
    assert (row["content"], row["reasoning"]) == (None, "only thinking")
    await send(client, sid, '[[mock:text content="next"]]')
    assert [m for m in turn_calls(mock_llm)[-1]["messages"] if m["role"] == "assistant"] == []


async def test_reasoning_before_a_tool_call_closes_before_the_call(
    chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(
        client, sid, '[[mock:reasoning tokens=3]] [[mock:tool name=calculate args={"expression": "6*7"}]]'
    )
    assert_well_formed(body)
    seq = types(body)
    # Both steps reason (the marker is in the user message the model sees each time), each in its own part.
    assert seq.count("reasoning-start") == 2
    assert seq.index("reasoning-end") < seq.index("tool-input-start")
    rows = await assistant_rows(db, sid)
    assert [r["reasoning"] for r in rows] == ["Hmm ipsum dolor", "Hmm ipsum dolor"]


async def test_finish_carries_the_turns_usage_model_and_cost(chat_settings: Settings, db: asyncpg.Connection) -> None:
    priced = chat_settings.model_copy(update={"model_prices": PRICES})
    async with LiveServer(priced) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        message = "[[mock:reasoning tokens=4]] [[mock:usage cached=20]] [[mock:text tokens=5]]"
        _, body = await send(client, sid, message)
    assert_well_formed(body)
    finish = chunks(body)[-1]
    assert finish["type"] == "finish"
    metadata = finish["messageMetadata"]
    assert metadata["model"] == "mock-model"
    usage = metadata["usage"]
    assert usage["completionTokens"] == 9 and usage["reasoningTokens"] == 4 and usage["cachedTokens"] == 20
    assert usage["totalTokens"] == usage["promptTokens"] + 9
    expected = ((usage["promptTokens"] - 20) * 2.0 + 20 * 0.5 + 9 * 8.0) / 1e6
    assert metadata["costUsd"] == pytest.approx(expected)
    [row] = await assistant_rows(db, sid)
    assert row["usage"] == {
        "prompt_tokens": usage["promptTokens"],
        "completion_tokens": 9,
        "cached_tokens": 20,
        "reasoning_tokens": 4,
    }


async def test_finish_of_an_unpriced_model_has_usage_and_no_cost(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, "[[mock:text tokens=3]]")
    metadata = chunks(body)[-1]["messageMetadata"]
    assert metadata["usage"]["completionTokens"] == 3 and metadata["model"] == "mock-model"
    assert "costUsd" not in metadata


async def test_a_tool_turn_sums_the_usage_of_its_steps(chat_settings: Settings, db: asyncpg.Connection) -> None:
    priced = chat_settings.model_copy(update={"model_prices": PRICES})
    async with LiveServer(priced) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        _, body = await send(client, sid, '[[mock:tool name=calculate args={"expression": "6*7"}]]')
        await wait_idle(client, sid)
        report = (await client.get(f"/api/chat/sessions/{sid}/usage", headers=ALICE)).json()
    turn = chunks(body)[-1]["messageMetadata"]["usage"]
    rows = await assistant_rows(db, sid)
    assert len(rows) == 2
    assert turn["promptTokens"] == sum(r["usage"]["prompt_tokens"] for r in rows)
    assert turn["completionTokens"] == sum(r["usage"]["completion_tokens"] for r in rows)
    [model] = report["by_model"]
    assert model["model"] == "mock-model" and model["messages"] == 2
    assert model["prompt_tokens"] == turn["promptTokens"] == report["prompt_tokens"]
    assert report["cost_usd"] == pytest.approx(chunks(body)[-1]["messageMetadata"]["costUsd"])


async def test_session_usage_sums_turns_with_cost_by_model(chat_settings: Settings) -> None:
    priced = chat_settings.model_copy(update={"model_prices": PRICES})
    async with LiveServer(priced) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        costs = []
        for message in ("[[mock:usage cached=10]] [[mock:text tokens=4]]", "[[mock:reasoning tokens=2]]"):
            _, body = await send(client, sid, message)
            costs.append(chunks(body)[-1]["messageMetadata"]["costUsd"])
            await wait_idle(client, sid)
        report = (await client.get(f"/api/chat/sessions/{sid}/usage", headers=ALICE)).json()
        other = await client.get(f"/api/chat/sessions/{sid}/usage", headers=auth("mallory"))
    assert other.status_code == 404
    assert report["cached_tokens"] == 10 and report["reasoning_tokens"] == 2
    assert report["cost_usd"] == pytest.approx(sum(costs))
    [model] = report["by_model"]
    assert (model["model"], model["messages"], model["cost_usd"]) == ("mock-model", 2, pytest.approx(sum(costs)))
    assert report["total_tokens"] == report["prompt_tokens"] + report["completion_tokens"]


async def test_session_usage_without_prices_has_no_cost(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    sid = await new_session(client)
    empty = (await client.get(f"/api/chat/sessions/{sid}/usage", headers=ALICE)).json()
    assert empty["by_model"] == [] and empty["cost_usd"] is None and empty["total_tokens"] == 0
    await send(client, sid, "[[mock:text tokens=3]]")
    await wait_idle(client, sid)
    report = (await client.get(f"/api/chat/sessions/{sid}/usage", headers=ALICE)).json()
    assert report["cost_usd"] is None and report["by_model"][0]["cost_usd"] is None
    assert report["by_model"][0]["completion_tokens"] == 3
