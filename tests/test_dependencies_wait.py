"""`backend/dependencies_wait.py`: at startup the service waits (bounded, logged) for a PostgreSQL that is not
accepting connections yet, instead of exiting (it starts without Redis anyway, see tests/api/test_health.py); a
server that never comes, or a database that does not exist, ends it with a message."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from backend.dependencies_wait import wait_for_postgres
from backend.errors import ConfigurationError
from tests.conftest import DATABASE_URL
from tests.helpers import free_port


@contextlib.asynccontextmanager
async def forwarder(port: int, target: str) -> AsyncIterator[None]:
    """A TCP listener on `port` that forwards to `target` (`host:port`): the server "comes up" when it starts."""
    host, _, target_port = target.rpartition(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(host, int(target_port))
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()


def _moved(url: str, port: int) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{port}")).geturl()


def _address(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}"


async def test_waits_for_postgres_that_comes_up_later(db: asyncpg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()
    caplog.set_level(logging.INFO, "copilot.startup")
    waiting = asyncio.create_task(wait_for_postgres(_moved(DATABASE_URL, port), within_seconds=30))
    while "PostgreSQL is not accepting connections yet (attempt 2" not in caplog.text:
        assert not waiting.done(), waiting
        await asyncio.sleep(0.05)
    async with forwarder(port, _address(DATABASE_URL)):
        await waiting
    assert "PostgreSQL accepts connections (after" in caplog.text


async def test_gives_up_with_a_message_when_nothing_comes() -> None:
    with pytest.raises(ConfigurationError, match=r"PostgreSQL did not accept connections within 1s.*STARTUP_WAIT"):
        await wait_for_postgres(_moved(DATABASE_URL, free_port()), within_seconds=1)


async def test_a_missing_database_is_not_waited_for() -> None:
    wrong = urlsplit(DATABASE_URL)._replace(path="/no_such_database_here").geturl()
    with pytest.raises(asyncpg.InvalidCatalogNameError):
        await wait_for_postgres(wrong, within_seconds=30)
