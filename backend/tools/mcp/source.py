"""The MCP servers of a deployment as a source of registry tools, for the lifetime of the runtime.

Each server gets an `McpConnection`. Whenever one lists its tools, `McpToolSource` swaps that server's tools in the
registry (named `<server>__<tool>`, see `naming.py`); a turn reads the registry when it starts, so a list change is
seen from the next turn on. A server that goes down keeps its tools registered: a call answers a clear error
rather than the model losing track of a tool it used a moment ago.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager

from mcp import types as mcp_types

from backend.mcp_config import McpServer
from backend.tools.mcp.connection import McpConnection, ServerStatus
from backend.tools.mcp.naming import tool_names
from backend.tools.mcp.tool import McpTool
from backend.tools.registry import ToolRegistry

log = logging.getLogger("copilot.tools.mcp")


class McpToolSource:
    def __init__(
        self,
        servers: Mapping[str, McpServer],
        registry: ToolRegistry,
        *,
        tool_timeout_seconds: float,
        connect_timeout_seconds: float,
        tools_ttl_seconds: float,
        reconnect_max_seconds: float,
    ) -> None:
        self._registry = registry
        self._tool_timeout = tool_timeout_seconds
        self._names: dict[str, list[str]] = {name: [] for name in servers}
        self._connections = {
            name: McpConnection(
                name,
                spec,
                on_tools=self._install,
                connect_timeout_seconds=connect_timeout_seconds,
                tools_ttl_seconds=tools_ttl_seconds,
                reconnect_max_seconds=reconnect_max_seconds,
            )
            for name, spec in servers.items()
        }

    async def start(self, wait_seconds: float) -> None:
        """Connect to every server in the background; wait up to `wait_seconds` for their first attempts, so the
        first turns see the tools of the servers that answer at once."""
        for connection in self._connections.values():
            connection.start()
        if self._connections and wait_seconds > 0:
            waits = [asyncio.create_task(c.wait_settled()) for c in self._connections.values()]
            _, pending = await asyncio.wait(waits, timeout=wait_seconds)
            for task in pending:
                task.cancel()
        for status in self.statuses():
            if status.state != "ready":
                log.warning(
                    "MCP server %r is not connected yet (%s): its tools join when it answers",
                    status.name,
                    status.error or status.state,
                )

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._connections.values()))

    def statuses(self) -> list[ServerStatus]:
        return [c.status() for c in self._connections.values()]

    def _install(self, server: str, tools: Sequence[mcp_types.Tool]) -> None:
        connection = self._connections[server]
        timeout = connection.spec.timeout_seconds or self._tool_timeout
        for old in self._names[server]:
            self._registry.remove(old)
        installed = []
        for remote, name in zip(tools, tool_names(server, [t.name for t in tools]).values(), strict=True):
            try:
                approval = connection.spec.needs_approval(remote.name)
                tool = McpTool(name, remote, connection, timeout_seconds=timeout, requires_approval=approval)
                self._registry.register(tool)
            except ValueError as exc:  # a name a built-in or plug-in holds, or a schema the registry refuses
                log.warning("MCP server %r: tool %r left out: %s", server, remote.name, exc)
                continue
            installed.append(name)
        self._names[server] = installed
        connection.set_tool_count(len(installed))
        log.info("MCP server %r: %d tools (%s)", server, len(installed), ", ".join(installed) or "none")


@asynccontextmanager
async def open_mcp_tools(
    servers: Mapping[str, McpServer],
    registry: ToolRegistry,
    *,
    tool_timeout_seconds: float,
    connect_timeout_seconds: float,
    tools_ttl_seconds: float,
    reconnect_max_seconds: float,
    startup_wait_seconds: float,
) -> AsyncIterator[McpToolSource]:
    """`McpToolSource` started (see `start`) and closed at exit (stdio servers are stopped)."""
    source = McpToolSource(
        servers,
        registry,
        tool_timeout_seconds=tool_timeout_seconds,
        connect_timeout_seconds=connect_timeout_seconds,
        tools_ttl_seconds=tools_ttl_seconds,
        reconnect_max_seconds=reconnect_max_seconds,
    )
    try:
        await source.start(startup_wait_seconds)
        yield source
    finally:
        await source.close()
