"""Raw HTTP servers for the model client's tests: a handler per connection, and what the server saw."""

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

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

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


@asynccontextmanager
async def address_that_drops_packets() -> AsyncIterator[tuple[str, int]]:
    """An address whose SYNs go unanswered (a listener with a full accept queue: Linux drops further SYNs), as a
    broken route would; skips the test on a kernel that answers them."""
    loop = asyncio.get_running_loop()
    with contextlib.ExitStack() as sockets:
        dropping = sockets.enter_context(socket.socket())
        dropping.bind(("127.0.0.1", 0))
        dropping.listen(0)
        for _ in range(3):
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
        yield dropping.getsockname()


def resolving_to(monkeypatch: pytest.MonkeyPatch, *addresses: tuple[str, int]) -> None:
    """Every host name resolves to `addresses` (IPv4, in this order) on the running loop."""

    async def resolved(host: str, port: int, **_: object) -> list[tuple[Any, ...]]:
        kind = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "")
        return [(*kind, address) for address in addresses]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolved)


def sse_reply(*texts: str) -> bytes:
    """A chat completion stream as a chunked HTTP/1.1 response: one chunk per event, as providers send them."""
    events = [{"choices": [{"index": 0, "delta": {"content": text}}]} for text in texts]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    body = b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in (b"data: %b\n\n" % orjson.dumps(e) for e in events))
    done = b"data: [DONE]\n\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + body + b"%x\r\n%b\r\n0\r\n\r\n" % (len(done), done)


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    line, *fields = head.strip().split("\r\n")
    headers = {name.lower(): value for name, value in (f.split(": ", 1) for f in fields)}
    return line, headers, await reader.readexactly(int(headers["content-length"]))


class RecordingModel:
    """Answers each request with a reply naming its first user message, after `hold` (set: answer at once); records
    the first user message of every request and of those whose client hung up before the answer."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.hung_up: list[str] = []
        self.hold = asyncio.Event()
        self.hold.set()
        self.base_url = ""
        self.cut_first = False
        """Cut the first reply short: its head, its first event and part of the next, then the connection closes."""

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                _, _, body = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            content = next(m["content"] for m in orjson.loads(body)["messages"] if m["role"] == "user")
            self.asked.append(content)
            waiting = asyncio.ensure_future(self.hold.wait())
            gone = asyncio.ensure_future(reader.read(1))  # b"" once the client closed the connection
            done, _ = await asyncio.wait([waiting, gone], return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                waiting.cancel()
                self.hung_up.append(content)
                return
            gone.cancel()
            await asyncio.wait([gone])  # cancelled before the next request is read from the same reader
            reply = sse_reply("re: ", content)
            if self.cut_first and len(self.asked) == 1:
                head = reply.index(b"\r\n\r\n") + 4
                size_end = reply.index(b"\r\n", head)
                first = size_end + 2 + int(reply[head:size_end], 16) + 2  # the first event's chunk, whole
                writer.write(reply[:first] + b"40\r\ndata: {")  # and part of the next
                await writer.drain()
                return  # the connection closes mid-body
            writer.write(reply)
            await writer.drain()
