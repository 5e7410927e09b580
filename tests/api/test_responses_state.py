"""`COPILOT_RESPONSES_STATE=server` end to end: the provider stores each response, a session's next model call
sends only its new input items with `previous_response_id` (kept in Postgres), and a provider that no longer knows
the id gets the whole input once more without the client noticing. The mock model keeps the stored responses."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from tests.api.test_chat_stream import assert_well_formed, new_session, send, wait_idle
from tests.conftest import LiveServer
from tests.sse import text_of, types


@pytest.fixture
async def chat(chat_settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, LiveServer]]:
    settings = chat_settings.model_copy(update={"llm_api": "responses", "responses_state": "server"})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        yield client, live


def model_calls(mock: MockLLMServer) -> list[dict[str, Any]]:
    return [r for r in mock.requests if r.get("stream")]


async def chain_of(db: asyncpg.Connection, sid: str) -> str | None:
    value = await db.fetchval("SELECT response_id FROM chat_response_chains WHERE session_id = $1", uuid.UUID(sid))
    return None if value is None else str(value)


async def test_the_tool_step_and_the_next_turn_send_only_new_items(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, '[[mock:tool name=calculate args={"expression": "6*7"}]]')
    assert_well_formed(body)
    assert "calculate returned" in text_of(body) and "42" in text_of(body)
    first, second = model_calls(mock_llm)
    assert first["store"] is True and "previous_response_id" not in first
    assert second["previous_response_id"] == "resp_mock_1"
    assert [item["type"] for item in second["input"]] == ["function_call_output"]
    await wait_idle(client, sid)
    assert await chain_of(db, sid) == "resp_mock_2"

    _, body = await send(client, sid, '[[mock:text content="Second turn"]]')
    assert text_of(body) == "Second turn"
    third = model_calls(mock_llm)[2]
    assert third["previous_response_id"] == "resp_mock_2"
    assert third["input"] == [{"role": "user", "content": '[[mock:text content="Second turn"]]'}]
    assert second["tools"] == third["tools"]  # tools are not carried by the chain: every call sends them


async def test_an_expired_response_is_retried_once_with_the_whole_input(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    await send(client, sid, '[[mock:text content="First"]]')
    await wait_idle(client, sid)
    _, body = await send(client, sid, '[[mock:expire_response]] [[mock:text content="Still here"]]')
    assert_well_formed(body)
    assert text_of(body) == "Still here" and "error" not in types(body)
    _, refused, whole = model_calls(mock_llm)
    assert refused["previous_response_id"] == "resp_mock_1" and len(refused["input"]) == 1
    assert "previous_response_id" not in whole and whole["store"] is True
    assert [i.get("role") for i in whole["input"]] == ["system", "user", "assistant", "user"]
    await wait_idle(client, sid)
    assert await chain_of(db, sid) == "resp_mock_3"


async def test_an_unknown_response_id_in_storage_is_recovered_the_same_way(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    await send(client, sid, '[[mock:text content="First"]]')
    await wait_idle(client, sid)
    mock_llm.mock.reset()  # the provider forgot every stored response (another region, a restart)
    _, body = await send(client, sid, '[[mock:text content="Again"]]')
    assert text_of(body) == "Again" and "error" not in types(body)
    refused, whole = model_calls(mock_llm)
    assert "previous_response_id" in refused and "previous_response_id" not in whole


async def test_a_changed_history_sends_the_whole_input(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer, db: asyncpg.Connection
) -> None:
    client, _ = chat
    sid = await new_session(client)
    await send(client, sid, '[[mock:text content="First"]]')
    await wait_idle(client, sid)
    # What the provider holds no longer starts the history (as after a compaction): no previous_response_id.
    await db.execute("UPDATE chat_response_chains SET digest = 'other' WHERE session_id = $1", uuid.UUID(sid))
    await send(client, sid, '[[mock:text content="Again"]]')
    last = model_calls(mock_llm)[-1]
    assert "previous_response_id" not in last and len(last["input"]) == 4
