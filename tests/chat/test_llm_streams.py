"""Streamed replies over aiohttp (`backend/chat/llm_streams.py`), against raw servers: the request is the SDK's,
connections are reused as the SDK's client reused them, TLS trusts what the SDK's client trusts, a proxy keeps the
SDK's client, addresses are raced, and failures read as the SDK's and httpx's errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx2
import openai
import orjson
import pytest

from backend.chat.llm import LLMClient, RetryPolicy, TextChunk
from backend.chat.llm_http import model_http_client
from backend.chat.llm_streams import ModelStreams
from backend.errors import ModelError
from tests.raw_http import (
    address_that_drops_packets,
    raw_server,
    read_request,
    request_line,
    resolving_to,
    sse_reply,
    tls_contexts,
)

MESSAGES = [{"role": "user", "content": "hi"}]


async def texts(llm: LLMClient) -> str:
    return "".join([e.text async for e in llm.stream(MESSAGES) if isinstance(e, TextChunk)])


async def failure(base_url: str) -> ModelError:
    """How one call to `base_url`, not retried, fails."""
    llm = LLMClient(base_url=base_url, api_key="k", model="m", retry=RetryPolicy(0), idle_timeout=5)
    try:
        with pytest.raises(ModelError) as caught:
            await texts(llm)
    finally:
        await llm.close()
    return caught.value


async def test_a_streamed_reply_is_read_over_aiohttp_with_the_request_the_sdk_builds() -> None:
    requests: list[tuple[str, dict[str, str], bytes]] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests.append(await read_request(reader))
        writer.write(sse_reply("Hel", "lo"))
        await writer.drain()

    async with raw_server(answer) as seen:
        llm = LLMClient(base_url=f"{seen[0]}/v1", api_key="sk-test", model="m", retry=RetryPolicy(0), idle_timeout=5)
        sdk_request = llm._client._build_request(  # what the SDK itself would send
            openai._models.FinalRequestOptions.construct(
                method="post", url="/chat/completions", content=b"", security={"bearer_auth": True}
            )
        )
        try:
            assert llm._streams.direct
            assert await texts(llm) == "Hello"
        finally:
            await llm.close()
    line, headers, body = requests[0]
    assert line == "POST /v1/chat/completions HTTP/1.1"
    assert headers["authorization"] == "Bearer sk-test"
    for name in ("user-agent", "content-type", "accept", "x-stainless-lang", "x-stainless-package-version"):
        assert headers[name] == sdk_request.headers[name]
    assert orjson.loads(body)["messages"] == MESSAGES and orjson.loads(body)["stream"] is True


async def test_a_connection_is_reused_across_replies_and_one_the_server_closed_is_not() -> None:
    async def two_replies_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in (1, 2):
            line, _, _ = await read_request(reader)
            seen.append(line)
            writer.write(sse_reply(f"reply {n}"))
            await writer.drain()
        # Closed while the client keeps the connection as idle and reusable.

    async with raw_server(two_replies_then_close) as seen:
        llm = LLMClient(base_url=f"{seen[0]}/v1", api_key="k", model="m", retry=RetryPolicy(0), idle_timeout=5)
        try:
            replies = [await texts(llm), await texts(llm)]
            await asyncio.sleep(0.05)  # the close arrives while the connection is idle in the pool
            replies.append(await texts(llm))
        finally:
            await llm.close()
    assert replies == ["reply 1", "reply 2", "reply 1"]
    post = "POST /v1/chat/completions HTTP/1.1"
    assert seen[1:] == ["connection", post, post, "connection", post]


async def test_a_status_error_is_the_sdks_own_and_a_refused_connection_is_httpx_connect_error() -> None:
    body = orjson.dumps({"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}})

    async def limited(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(
            b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 0.01\r\n"
            b"content-length: %d\r\n\r\n%b" % (len(body), body)
        )
        await writer.drain()

    async with raw_server(limited) as seen:
        limited_error = await failure(f"{seen[0]}/v1")
    assert isinstance(limited_error.__cause__, openai.RateLimitError)
    assert limited_error.__cause__.body == orjson.loads(body)["error"]
    assert limited_error.provider_code == "rate_limit_exceeded" and limited_error.retry_after == 0.01

    refused = await failure("http://127.0.0.1:9/v1")
    assert isinstance(refused.__cause__, httpx2.ConnectError)
    assert refused.provider_code == "connection_error" and refused.retryable


async def test_a_body_cut_short_is_a_connection_error_retried_before_the_first_chunk() -> None:
    async def cut_then_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        if seen.count("connection") == 1:  # the first reply breaks off inside its first chunk
            writer.write(sse_reply("never seen")[:90])
            await writer.drain()
            return
        writer.write(sse_reply("after the cut"))
        await writer.drain()

    async with raw_server(cut_then_answer) as seen:
        llm = LLMClient(
            base_url=f"{seen[0]}/v1", api_key="k", model="m", retry=RetryPolicy(1, 0.01, 0.01), idle_timeout=5
        )
        try:
            assert await texts(llm) == "after the cut"
        finally:
            await llm.close()
    assert seen.count("connection") == 2


async def test_tls_trusts_what_the_sdks_client_trusts(tmp_path: Path) -> None:
    server_context, client_context = tls_contexts(tmp_path)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_line(reader, seen)
        await reader.readuntil(b"}")  # the body (the request's JSON)
        writer.write(sse_reply("over tls"))
        await writer.drain()
        await reader.read()

    async with raw_server(answer, server_context) as seen:
        base_url = f"{seen[0].replace('127.0.0.1', 'localhost')}/v1"
        for verify, expected in ((client_context, "over tls"), (None, None)):
            http = openai.DefaultAsyncHttpxClient(verify=verify) if verify else model_http_client()
            sdk = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0, http_client=http)
            streams = ModelStreams(sdk, http, connect_timeout=5.0)
            try:
                if expected is None:  # a certificate the SDK's client does not trust is refused
                    with pytest.raises(httpx2.ConnectError):
                        await streams.open("/chat/completions", b"{}", sdk_post=not_through_the_sdk)
                    continue
                reply = await streams.open("/chat/completions", b"{}", sdk_post=not_through_the_sdk)
                body = b"".join([chunk async for chunk in reply.chunks()])
                await reply.close()
                assert b"over tls" in body
            finally:
                await streams.close()
                await sdk.close()
    assert "POST /v1/chat/completions HTTP/1.1" in seen


async def not_through_the_sdk() -> httpx2.Response:
    raise AssertionError("a model reached directly is read over aiohttp")


async def test_a_proxy_from_the_environment_keeps_the_sdks_client(monkeypatch: pytest.MonkeyPatch) -> None:
    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, _, _ = await read_request(reader)
        seen.append(line)
        writer.write(sse_reply("via the proxy"))
        await writer.drain()

    async with raw_server(proxy) as seen:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", seen[0])
        llm = LLMClient(
            base_url="http://model.invalid/v1", api_key="k", model="m", retry=RetryPolicy(0), idle_timeout=5
        )
        try:
            assert not llm._streams.direct
            assert await texts(llm) == "via the proxy"
        finally:
            await llm.close()
    assert seen[1:] == ["connection", "POST http://model.invalid/v1/chat/completions HTTP/1.1"]


async def test_connecting_races_the_addresses_so_one_that_drops_packets_costs_no_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The model's host resolves to an address that drops every packet and to one that works: the second is
    tried 250 ms after the first (as `llm_http` does for the SDK's client), not after the connect timeout."""
    loop = asyncio.get_running_loop()
    async with address_that_drops_packets() as dropping:

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await read_request(reader)
            writer.write(sse_reply("from the second address"))
            await writer.drain()

        async with raw_server(answer) as seen:
            working = ("127.0.0.1", int(seen[0].rsplit(":", 1)[1]))

            resolving_to(monkeypatch, dropping, working)
            llm = LLMClient(
                base_url=f"http://model.test:{working[1]}/v1",
                api_key="k",
                model="m",
                retry=RetryPolicy(0),
                idle_timeout=5,
            )
            started = loop.time()
            try:
                assert await texts(llm) == "from the second address"
            finally:
                await llm.close()
    assert loop.time() - started < 1.5
