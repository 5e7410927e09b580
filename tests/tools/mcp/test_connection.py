"""`McpConnection` alone, against a server that hangs up on every request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from backend.mcp_config import HttpServer
from backend.tools.mcp.connection import McpConnection, ServerUnavailable


@pytest.fixture
async def hang_up_url() -> AsyncIterator[str]:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    async with listener:
        yield f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/mcp"


def connection(url: str) -> McpConnection:
    return McpConnection(
        "flaky",
        HttpServer(url=url),  # type: ignore[arg-type]
        on_tools=lambda server, tools: None,
        connect_timeout_seconds=5,
        tools_ttl_seconds=60,
        reconnect_max_seconds=0.01,
    )


async def test_close_ends_the_supervisor_whenever_it_lands(hang_up_url: str) -> None:
    # A cancellation landing while the SDK opens a connection used to be swallowed now and then (about 1 close in
    # 30), leaving the supervisor reconnecting forever and shutdown waiting on it.
    for attempt in range(150):
        server = connection(hang_up_url)
        server.start()
        await asyncio.sleep(0.001 * (attempt % 50))
        await asyncio.wait_for(server.close(), 10)


async def test_a_call_to_a_server_that_is_down_fails_at_once_with_the_reason(hang_up_url: str) -> None:
    server = connection(hang_up_url)
    server.start()
    try:
        await server.wait_settled()
        with pytest.raises(ServerUnavailable, match=r"MCP server 'flaky' is unavailable \(\w+\)"):
            while True:  # a call made during an attempt waits for it, then fails the same way
                await server.call("anything", {})
    finally:
        await server.close()
    status = server.status()
    assert status.state in ("down", "connecting") and status.tools == 0 and status.error
