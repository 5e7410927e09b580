"""The model's HTTP client on asyncio's streams (`backend/chat/llm_http.py`), against raw servers: what httpcore's
own backend gave must still hold (keep-alive reuse and its end, TLS, proxies from the environment, timeouts)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpcore2
import httpx2
import openai
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from backend.chat.llm import LLMClient, RetryPolicy
from backend.chat.llm_http import AsyncioBackend, AsyncioStream, model_http_client, on_asyncio_streams
from backend.errors import ModelError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[list[str]]:
    """A server on 127.0.0.1 that runs `handler` per connection; yields its base URL, then what it saw: one
    `connection` entry per connection accepted and each request line read by `request_line`."""
    seen: list[str] = []
    tasks: list[asyncio.Task[None]] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        seen.append("connection")
        try:
            await handler(reader, writer)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=ssl_context)
    port = server.sockets[0].getsockname()[1]
    seen.append(f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}")
    try:
        yield seen
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def request_line(reader: asyncio.StreamReader, seen: list[str]) -> None:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    seen.append(head.split("\r\n", 1)[0])


def ok(body: bytes, *, close: bool = False) -> bytes:
    connection = b"close" if close else b"keep-alive"
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\nconnection: %s\r\n\r\n%s" % (len(body), connection, body)


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


def tls_contexts(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for `localhost`, and a client context that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


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
    with contextlib.ExitStack() as sockets:
        dropping = sockets.enter_context(socket.socket())
        dropping.bind(("127.0.0.1", 0))
        dropping.listen(0)
        for _ in range(3):  # a full accept queue: Linux drops further SYNs
            filler = sockets.enter_context(socket.socket())
            filler.setblocking(False)
            filler.connect_ex(dropping.getsockname())
        probe = sockets.enter_context(socket.socket())
        probe.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(probe, dropping.getsockname()), 0.5)
            pytest.skip("this kernel answers a connection to a full accept queue")
        except TimeoutError:
            pass

        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await request_line(reader, seen)
            writer.write(ok(b"from the second address", close=True))
            await writer.drain()

        async with raw_server(answer) as seen:
            working = ("127.0.0.1", int(seen[0].rsplit(":", 1)[1]))

            async def two_addresses(host: str, port: int, **_: object) -> list[tuple[Any, ...]]:
                kind = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
                return [(*kind, dropping.getsockname()), (*kind, working)]

            monkeypatch.setattr(loop, "getaddrinfo", two_addresses)
            client = model_http_client()
            started = loop.time()
            try:
                response = await client.get("http://model.test/v1/models", timeout=httpx2.Timeout(5.0, connect=3.0))
            finally:
                await client.aclose()
    assert response.text == "from the second address"
    assert loop.time() - started < 1.5
