"""Provider errors as a gateway (LiteLLM proxy) reports them, end to end over Chat Completions: the turn acts on
them as on OpenAI's own (compaction on overflow, a retry of a stall before the first chunk) and the client gets the
same stable codes."""

from __future__ import annotations

import httpx

from backend.devtools.mock_llm import MockLLMServer
from tests.api.test_chat_stream import assert_well_formed, new_session, send, turn_calls
from tests.conftest import LiveServer
from tests.sse import chunks, text_of, types


def data_errors(body: bytes) -> list[object]:
    return [c["data"] for c in chunks(body) if c["type"] == "data-error"]


async def test_a_gateways_context_overflow_compacts_and_retries(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    message = '[[mock:context_length gateway=litellm times=1 key=g]] [[mock:text content="fits now"]]'
    _, body = await send(client, sid, message)
    assert_well_formed(body)
    assert text_of(body) == "fits now" and "error" not in types(body)
    assert len(turn_calls(mock_llm)) == 2


async def test_a_gateways_region_block_reads_as_one(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, "[[mock:region_block gateway=litellm]]")
    assert_well_formed(body)
    assert data_errors(body) == [{"code": "region_blocked", "retryable": False}]
    error = next(c for c in chunks(body) if c["type"] == "error")
    assert "country or region" in error["errorText"]


async def test_a_gateways_in_stream_timeout_is_retried_before_the_first_chunk(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    message = '[[mock:stream_error after=1 code=408 times=1 key=t]] [[mock:text content="after the stall"]]'
    _, body = await send(client, sid, message)
    assert_well_formed(body)
    assert text_of(body) == "after the stall" and len(turn_calls(mock_llm)) == 2


async def test_a_gateways_in_stream_timeout_after_text_ends_the_reply(
    chat: tuple[httpx.AsyncClient, LiveServer], mock_llm: MockLLMServer
) -> None:
    client, _ = chat
    sid = await new_session(client)
    _, body = await send(client, sid, "[[mock:text tokens=6]] [[mock:stream_error after=4 code=408]]")
    assert_well_formed(body)
    assert text_of(body) == "Lorem ipsum dolor"
    assert data_errors(body) == [{"code": "timeout", "retryable": True}]
    assert len(turn_calls(mock_llm)) == 1
