"""The HTTP client the model is reached through: the `openai` SDK's own, on asyncio's streams rather than anyio's.
It builds every request and sends the non-streamed ones (titles, summaries) and, behind a proxy, the streamed ones
too; a streamed reply to a model reached directly is read over aiohttp (`llm_streams`).

Every token of every reply is one read from the model's connection, so what a read costs is paid a thousand times
per reply. httpcore's default network backend (anyio) enters a cancel scope and an exception map per read, and
pauses and resumes the socket's reading around it, which are two more calls into the event loop's poller. The
streams here read as asyncio's own do: the transport reads whenever data comes, a read takes what is buffered or
waits for it, and a read without a timeout arms no timer (the model's stream has its own idle deadline,
`watchdogs.ReadDeadline`). HTTP itself (h11), the connection pool, TLS settings, proxies from the environment and
every error type stay httpx's and httpcore's: only the bytes' way in and out changes.

Connecting races the host's addresses as anyio did (RFC 8305, "happy eyeballs": the next address is tried 250 ms
after the last one started, IPv6 and IPv4 alternating): uvloop's own connect tries them one after another, so an
address that drops its packets (a broken IPv6 route) would use up the connect timeout.

Because this stream reads ahead, the pool's check that an idle keep-alive connection is still usable ("is it
readable?", i.e. did the server close it or send something unasked) looks at what the stream has taken in: its end,
a closing transport or bytes nobody asked for, where anyio's backend polls the socket.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import ssl
from asyncio import staggered
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

import httpcore2
import httpx2
import openai

log = logging.getLogger("copilot.llm")


def model_http_client() -> httpx2.AsyncClient:
    """The SDK's default client (its timeouts, pool limits, redirects, proxies from the environment), every pool of
    it on `AsyncioBackend`."""
    client = openai.DefaultAsyncHttpxClient()
    if not on_asyncio_streams(client):
        log.warning("the model's HTTP client kept its default network backend (unknown httpx2 internals)")
    return client


def on_asyncio_streams(client: httpx2.AsyncClient) -> bool:
    """Put every connection pool of `client` (its transport and the proxies' mounts) on `AsyncioBackend`; False if
    none was found. httpx2 takes no network backend in its public API: the pools are its transports' `_pool`."""
    transports = [client._transport, *client._mounts.values()]
    pools = [getattr(transport, "_pool", None) for transport in transports if transport is not None]
    found = [pool for pool in pools if isinstance(pool, httpcore2.AsyncConnectionPool)]
    backend = AsyncioBackend()
    for pool in found:
        pool._network_backend = backend
    return bool(found)


class AsyncioStream(httpcore2.AsyncNetworkStream):
    """One connection, as httpcore reads and writes it, on an asyncio stream pair."""

    __slots__ = ("_reader", "_writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        try:
            if timeout is None:
                return await self._reader.read(max_bytes)
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError as e:
            raise httpcore2.ReadTimeout(str(e)) from e
        except OSError as e:
            raise httpcore2.ReadError(str(e)) from e

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        try:
            self._writer.write(buffer)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError as e:
            raise httpcore2.WriteTimeout(str(e)) from e
        except OSError as e:
            raise httpcore2.WriteError(str(e)) from e

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError as e:
            self._writer.close()
            raise httpcore2.ConnectTimeout(str(e)) from e
        except OSError as e:  # ssl.SSLError among them
            self._writer.close()
            raise httpcore2.ConnectError(str(e)) from e
        return self

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # An idle connection is done with if the server closed it (or sent anything): asyncio has read it.
            return self._writer.transport.is_closing() or self._reader.at_eof() or _buffered(self._reader)
        name = _EXTRA_INFO.get(info)
        if name is None or self._writer.transport.is_closing():
            return None  # asyncio's TLS transport, once closed, raises for any
        return self._writer.get_extra_info(name)


_EXTRA_INFO = {"ssl_object": "ssl_object", "client_addr": "sockname", "server_addr": "peername", "socket": "socket"}


def _buffered(reader: asyncio.StreamReader) -> bool:
    """Whether `reader` holds bytes nobody has read yet (asyncio has no public accessor for its buffer)."""
    return bool(getattr(reader, "_buffer", b""))


class AsyncioBackend(httpcore2.AsyncNetworkBackend):
    """Opens `AsyncioStream`s; errors are httpcore's, as the anyio backend raises them."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        return await _connected(_open_tcp(host, port, local_address), timeout, socket_options)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.AsyncNetworkStream:
        return await _connected(asyncio.open_unix_connection(path), timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


async def _connected(
    opening: Coroutine[Any, Any, tuple[asyncio.StreamReader, asyncio.StreamWriter]],
    timeout: float | None,
    socket_options: Iterable[Any] | None,
) -> AsyncioStream:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await opening
    except TimeoutError as e:
        raise httpcore2.ConnectTimeout(str(e)) from e
    except OSError as e:
        raise httpcore2.ConnectError(str(e)) from e
    sock = writer.get_extra_info("socket")
    for option in socket_options or ():
        sock.setsockopt(*option)
    return AsyncioStream(reader, writer)


HAPPY_EYEBALLS_DELAY = 0.25
"""Seconds after one connection attempt starts before the next address is tried too (anyio's, RFC 8305's)."""


async def _open_tcp(
    host: str, port: int, local_address: str | None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    addresses = _interleaved(await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    failures: list[OSError] = []

    async def attempt(address: _AddrInfo) -> socket.socket:
        family, kind, proto, _, sockaddr = address
        sock = socket.socket(family, kind, proto)
        try:
            sock.setblocking(False)
            if local_address is not None:
                sock.bind((local_address, 0))
            await loop.sock_connect(sock, sockaddr)
        except OSError as e:
            sock.close()
            failures.append(e)
            raise
        except BaseException:  # cancelled: another address won, or the timeout
            sock.close()
            raise
        return sock

    attempts = [functools.partial(attempt, address) for address in addresses]
    sock, _, _ = await staggered.staggered_race(attempts, HAPPY_EYEBALLS_DELAY)
    if sock is None:
        if len(failures) == 1:
            raise failures[0]
        raise OSError(f"could not connect to {host}:{port}: {'; '.join(map(str, failures)) or 'no address'}")
    return await asyncio.open_connection(sock=sock)


_AddrInfo = tuple[int, int, int, str, Any]


def _interleaved(addresses: Sequence[_AddrInfo]) -> list[_AddrInfo]:
    """The resolver's addresses with their families alternating, the first family first (RFC 8305)."""
    by_family: dict[int, list[_AddrInfo]] = {}
    for address in addresses:
        by_family.setdefault(address[0], []).append(address)
    queues = list(by_family.values())
    return [queue[i] for i in range(max(map(len, queues), default=0)) for queue in queues if i < len(queue)]
