"""A floor for reading the model's stream: HTTP/1.1 parsed in C (httptools), on an asyncio protocol, nothing else.

`bench.model_reads` puts it beside the service's client to say what the HTTP client's stack (h11, httpcore,
httpx, the SDK's request path) costs per token: the same request body, the same SSE rules and the same chunk
parsing (`LLMClient`'s own reader), but the connection's bytes parsed by httptools' callbacks as they arrive and
the events handed to the turn through one future per wait. It is a measuring stick, not a client: plain HTTP to
one host, keep-alive reuse, no TLS, proxies, redirects, timeouts or retries, and an error status only raises.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import httptools
import orjson

from backend.chat.llm import LLMClient
from backend.chat.llm_events import ModelEvent
from backend.chat.watchdogs import ReadDeadline


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one response at a time, its SSE `data` queued as it is parsed."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.events: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.complete = False
        self.lost = False
        self._parser = httptools.HttpResponseParser(self)
        self._pending = b""
        self._data: list[bytes] = []

    def begin(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self.status, self.complete, self._pending, self._data = 0, False, b"", []
        self.events.clear()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.complete = True
        self._wake()

    # httptools' callbacks
    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        lines = (self._pending + body).splitlines(keepends=True) if self._pending else body.splitlines(keepends=True)
        self._pending = lines.pop() if lines and lines[-1][-1:] != b"\n" else b""
        for line in lines:
            if line in (b"\n", b"\r\n", b"\r"):
                if self._data:
                    self.events.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:].rstrip(b"\r\n")
                self._data.append(value[1:] if value.startswith(b" ") else value)
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)


class BareModelReader:
    """Streams chat completions from `host:port` over pooled `_Connection`s, as `LLMClient._stream_body` does."""

    def __init__(self, llm: LLMClient, host: str, port: int, path: str, api_key: str) -> None:
        self._llm = llm
        self._host, self._port = host, port
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {api_key}\r\n"
            "Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: "
        ).encode()
        self._idle: list[_Connection] = []

    async def stream_body(self, body: dict[str, Any], ahead: object = None) -> AsyncIterator[ModelEvent]:
        # `ahead`: `LLMClient._stream_body`'s call sent ahead; the bench's calls never have one.
        connection = self._idle.pop() if self._idle else await self._connect()
        connection.begin()
        payload = orjson.dumps(body)
        assert connection.transport is not None
        connection.transport.write(b"%b%d\r\n\r\n%b" % (self._head, len(payload), payload))
        reply = self._llm._wire.reader(None)  # type: ignore[arg-type]  # used for an in-stream error only
        loop = asyncio.get_running_loop()
        done = False
        # The same idle deadline as the service's read loop: one timer per silence, noted per wait.
        with ReadDeadline(self._llm._idle_timeout) as deadline:
            while not done:
                while connection.events:
                    data = connection.events.popleft()
                    if data.startswith(b"[DONE]"):
                        done = True
                        break
                    for event in reply.read(data):
                        yield event
                else:
                    if connection.complete:
                        break
                    connection.waiter = loop.create_future()
                    deadline.start()
                    try:
                        await connection.waiter
                    finally:
                        deadline.stop()
                    connection.waiter = None
        if connection.status >= 400:
            raise RuntimeError(f"the model answered {connection.status}")
        while not connection.complete:  # the chunked body's end follows `[DONE]`
            connection.waiter = loop.create_future()
            await connection.waiter
            connection.waiter = None
        if not connection.lost:
            self._idle.append(connection)
        yield reply.completed()

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, connection = await loop.create_connection(_Connection, self._host, self._port)
        return connection

    def close(self) -> None:
        for connection in self._idle:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()
