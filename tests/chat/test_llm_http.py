"""The model's HTTP client on asyncio's streams (`backend/chat/llm_http.py`), against raw servers: what httpcore's
own backend gave must still hold (keep-alive reuse and its end, TLS, proxies from the environment, timeouts)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpcore2
import httpx2
import openai
import pytest

from backend.chat.llm import LLMClient, RetryPolicy
from backend.chat.llm_http import AsyncioBackend, AsyncioStream, model_http_client, on_asyncio_streams
from backend.errors import ModelError
from tests.raw_http import address_that_drops_packets, ok, raw_server, request_line, resolving_to, tls_contexts


async def test_the_models_client_is_the_sdks_on_asyncio_streams() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_line(reader, seen)
        writer.write(ok(b"hello", close=True))
        await writer.drain()

    async with raw_server(answer) as seen:
        client = model_http_client()
        try:
            response = await client.get(f"{seen[0]}/v1/models")
        finally:
            await client.aclose()
    assert response.text == "hello"
    assert isinstance(response.extensions["network_stream"], AsyncioStream)
    assert client.timeout == openai.DEFAULT_TIMEOUT  # the SDK's defaults are kept
    llm = LLMClient(base_url="http://127.0.0.1:9/v1", api_key="k", model="m", retry=RetryPolicy(), idle_timeout=1)
    assert isinstance(llm._client._client._transport._pool._network_backend, AsyncioBackend)  # type: ignore[attr-defined]
    await llm.close()


async def test_a_kept_alive_connection_is_reused_and_one_the_server_closed_is_not() -> None:
    async def two_requests_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for n in (1, 2):
            await request_line(reader, seen)
            writer.write(ok(b"answer %d" % n))
            await writer.drain()
        # Closed while the client holds the connection as idle and reusable (each response said keep-alive).

    async with raw_server(two_requests_then_close) as seen:
        client = model_http_client()
        try:
            answers = [(await client.get(f"{seen[0]}/{n}")).text for n in range(2)]
            await asyncio.sleep(0.05)  # the close arrives while the connection is idle in the pool
            answers.append((await client.get(f"{seen[0]}/after-close")).text)
        finally:
            await client.aclose()
    assert answers == ["answer 1", "answer 2", "answer 1"]
    assert seen[1:] == ["connection", "GET /0 HTTP/1.1", "GET /1 HTTP/1.1", "connection", "GET /after-close HTTP/1.1"]


async def test_a_read_timeout_is_httpx_own_and_a_refused_connection_too() -> None:
    async def head_then_silence(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_line(reader, seen)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\npart")
        await writer.drain()
        await asyncio.sleep(30)

    async with raw_server(head_then_silence) as seen:
        client = model_http_client()
        try:
            with pytest.raises(httpx2.ReadTimeout):
                await client.get(seen[0], timeout=httpx2.Timeout(5.0, read=0.2))
            with pytest.raises(httpx2.ConnectError):
                await client.get("http://127.0.0.1:9/")
        finally:
            await client.aclose()


async def test_tls_to_the_model_works(tmp_path: Path) -> None:
    server_context, client_context = tls_contexts(tmp_path)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_line(reader, seen)
        writer.write(ok(b"over tls"))
        await writer.drain()
        await reader.read()  # open until the client closes

    async with raw_server(answer, server_context) as seen:
        client = openai.DefaultAsyncHttpxClient(verify=client_context)
        untrusting = model_http_client()
        assert on_asyncio_streams(client)
        try:
            async with client.stream("GET", f"{seen[0].replace('127.0.0.1', 'localhost')}/secure") as response:
                stream = response.extensions["network_stream"]
                assert isinstance(stream, AsyncioStream) and stream.get_extra_info("ssl_object") is not None
                await response.aread()
            with pytest.raises(httpx2.ConnectError):  # a certificate the client does not trust is refused
                await untrusting.get(f"{seen[0]}/untrusted")
        finally:
            await client.aclose()
            await untrusting.aclose()
    assert response.text == "over tls"
    assert "GET /secure HTTP/1.1" in seen


async def test_a_proxy_from_the_environment_is_still_used(monkeypatch: pytest.MonkeyPatch) -> None:
    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_line(reader, seen)
        writer.write(ok(b"via the proxy", close=True))
        await writer.drain()

    async with raw_server(proxy) as seen:
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", seen[0])
        client = model_http_client()
        try:
            response = await client.get("http://model.invalid/v1/models")
            pools = [t._pool for t in client._mounts.values() if t is not None]  # type: ignore[attr-defined]
        finally:
            await client.aclose()
    assert response.text == "via the proxy"
    assert seen[1:] == ["connection", "GET http://model.invalid/v1/models HTTP/1.1"]
    assert pools and all(isinstance(pool._network_backend, AsyncioBackend) for pool in pools)
    assert all(isinstance(pool, httpcore2.AsyncHTTPProxy) for pool in pools)


async def test_a_model_that_never_answers_is_bounded_by_the_idle_timeout() -> None:
    """Streamed requests read without httpx's read timeout: the idle timeout bounds the wait for the head."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await request_line(reader, seen)
        await asyncio.sleep(30)

    async with raw_server(silent) as seen:
        llm = LLMClient(
            base_url=f"{seen[0]}/v1", api_key="k", model="m", retry=RetryPolicy(1, 0.01, 0.01), idle_timeout=0.3
        )
        started = asyncio.get_running_loop().time()
        try:
            with pytest.raises(ModelError) as caught:
                _ = [event async for event in llm.stream([{"role": "user", "content": "hi"}])]
        finally:
            await llm.close()
    assert caught.value.provider_code == "idle_timeout" and caught.value.retryable
    assert seen.count("POST /v1/chat/completions HTTP/1.1") == 2  # retried once, as any failure before a chunk
    assert asyncio.get_running_loop().time() - started < 5


async def test_connecting_races_the_addresses_so_one_that_drops_packets_costs_no_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The host resolves to an address that drops every packet (a broken IPv6 route, say) and to one that works:
    the second is tried 250 ms after the first, as anyio did, instead of after the connect timeout."""
    loop = asyncio.get_running_loop()
    async with address_that_drops_packets() as dropping:

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await request_line(reader, seen)
            writer.write(ok(b"from the second address", close=True))
            await writer.drain()

        async with raw_server(answer) as seen:
            working = ("127.0.0.1", int(seen[0].rsplit(":", 1)[1]))

            resolving_to(monkeypatch, dropping, working)
            client = model_http_client()
            started = loop.time()
            try:
                response = await client.get("http://model.test/v1/models", timeout=httpx2.Timeout(5.0, connect=3.0))
            finally:
                await client.aclose()
    assert response.text == "from the second address"
    assert loop.time() - started < 1.5
