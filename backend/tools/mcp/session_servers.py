"""The MCP servers sessions' owners added (`POST /api/chat/sessions/{id}/mcp-servers`), as a source of tools for
the turns of each session (`TurnServices.session_tools`).

A turn asks for its session's tools once, when it starts: the servers are read from Postgres, a connection to each
is opened on this pod the first time a turn needs it (the turn waits for that first attempt, bounded by
`COPILOT_MCP_CONNECT_TIMEOUT_SECONDS`) and kept for the next turns, and closed once no turn of the session used it
for `COPILOT_MCP_SESSION_IDLE_SECONDS`. A server that was removed is closed at the session's next turn. Every request
a connection sends passes the URL policy first (`url_policy.py`), so a host that starts resolving to a private
address is refused then too. A session's tools are built from its own servers only: no turn of one session can
reach another session's connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from mcp import types as mcp_types

from backend.errors import StorageUnavailable
from backend.mcp_config import HttpServer
from backend.store.mcp_servers import SessionMcpServer, SessionMcpServerStore
from backend.tools.base import Tool
from backend.tools.mcp.connection import McpConnection
from backend.tools.mcp.naming import tool_names
from backend.tools.mcp.sealed_headers import HeaderSealer, HeadersUnreadable
from backend.tools.mcp.tool import McpTool
from backend.tools.mcp.url_policy import UrlPolicy

log = logging.getLogger("copilot.tools.mcp")

_Key = tuple[UUID, str, str, float]
"""Session, server name, URL and when it was added: a server removed and added again is a new connection."""


class ServerRefused(Exception):
    """The session cannot have this server (name taken, too many servers); the message says which."""


@dataclass
class _Open:
    connection: McpConnection
    tools: list[Tool[Any]] = field(default_factory=list)
    used: float = field(default_factory=time.monotonic)


class SessionMcpServers:
    def __init__(
        self,
        store: SessionMcpServerStore,
        sealer: HeaderSealer | None,
        policy: UrlPolicy,
        *,
        tool_timeout_seconds: float,
        connect_timeout_seconds: float,
        tools_ttl_seconds: float,
        reconnect_max_seconds: float,
        idle_seconds: float,
        max_servers: int,
    ) -> None:
        self._store = store
        self._sealer = sealer
        self._policy = policy
        self._tool_timeout = tool_timeout_seconds
        self._connect_timeout = connect_timeout_seconds
        self._ttl = tools_ttl_seconds
        self._reconnect_max = reconnect_max_seconds
        self._idle = idle_seconds
        self._max_servers = max_servers
        self._open: dict[_Key, _Open] = {}
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._policy.enabled and self._sealer is not None

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="session MCP servers idle sweep")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        opened, self._open = list(self._open.values()), {}
        await asyncio.gather(*(o.connection.close() for o in opened))

    async def add(self, session_id: UUID, name: str, url: str, headers: dict[str, str]) -> SessionMcpServer:
        """Store a server for the session after checking its URL (`UrlRefused`); `ServerRefused` when the session
        already has one of that name or has `max_servers`."""
        assert self._sealer is not None
        await self._policy.check(url)
        outcome = await self._store.add(
            session_id, name, url, self._sealer.seal(headers), max_servers=self._max_servers
        )
        if outcome == "taken":
            raise ServerRefused(f"this session already has an MCP server named {name!r}")
        if outcome == "full":
            raise ServerRefused(f"a session may have at most {self._max_servers} MCP servers")
        return next(s for s in await self._store.list(session_id) if s.name == name)

    async def servers(self, session_id: UUID) -> list[SessionMcpServer]:
        return await self._store.list(session_id)

    async def remove(self, session_id: UUID, name: str) -> bool:
        """Delete the server and close this pod's connection to it (other pods close theirs at the session's next
        turn, or when idle); False when the session has none of that name."""
        removed = await self._store.remove(session_id, name)
        gone = [key for key in self._open if key[0] == session_id and key[1] == name]
        await asyncio.gather(*(self._open.pop(key).connection.close() for key in gone))
        return removed

    def header_names(self, server: SessionMcpServer) -> list[str]:
        """The names of the headers stored for `server` (never their values); [] when they cannot be read."""
        assert self._sealer is not None
        try:
            return sorted(self._sealer.open(server.headers))
        except HeadersUnreadable:
            return []

    def open_count(self, session_id: UUID) -> int:
        """Connections this pod holds for `session_id`'s servers."""
        return sum(1 for key in self._open if key[0] == session_id)

    async def tools_for(self, session_id: UUID, user_id: str) -> Sequence[Tool[Any]]:
        """The tools of `session_id`'s own servers, connecting to those this pod has no connection to yet."""
        if not self.enabled:
            return ()
        try:
            servers = await self._store.list(session_id)
        except StorageUnavailable as exc:
            # The turn goes on with the servers this pod already holds for the session (if any): no new one is
            # opened, none is dropped, until the list can be read again.
            log.warning("MCP servers of session %s not read (%s): the open connections are used", session_id, exc)
            return [t for key, o in self._open.items() if key[0] == session_id for t in o.tools]
        keys = {_key(s): s for s in servers}
        gone = [key for key in self._open if key[0] == session_id and key not in keys]
        await asyncio.gather(*(self._open.pop(key).connection.close() for key in gone))
        fresh = [self._connect(key, server) for key, server in keys.items() if key not in self._open]
        opened = [o for o in fresh if o is not None]
        if opened:
            waits = [asyncio.create_task(o.connection.wait_settled()) for o in opened]
            _, pending = await asyncio.wait(waits, timeout=self._connect_timeout)
            for task in pending:
                task.cancel()
        now = time.monotonic()
        tools: list[Tool[Any]] = []
        for key in keys:
            if (entry := self._open.get(key)) is not None:
                entry.used = now
                tools += entry.tools
        return tools

    def _connect(self, key: _Key, server: SessionMcpServer) -> _Open | None:
        assert self._sealer is not None
        try:
            headers = self._sealer.open(server.headers)
        except HeadersUnreadable as exc:
            log.warning("MCP server %r of session %s left out: %s", server.name, server.session_id, exc)
            return None
        spec = HttpServer.model_validate({"url": server.url, "headers": headers})
        entry: _Open

        def install(name: str, remote: Sequence[mcp_types.Tool]) -> None:
            names = tool_names(name, [t.name for t in remote])
            entry.tools = [
                McpTool(names[t.name], t, entry.connection, timeout_seconds=self._tool_timeout) for t in remote
            ]
            entry.connection.set_tool_count(len(entry.tools))

        connection = _SessionConnection(
            server.name,
            spec,
            on_tools=install,
            connect_timeout_seconds=self._connect_timeout,
            tools_ttl_seconds=self._ttl,
            reconnect_max_seconds=self._reconnect_max,
            request_guard=self._policy.guard,
        )
        entry = _Open(connection)
        connection.entry = entry
        self._open[key] = entry
        connection.start()
        return entry

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(self._idle / 4, 30.0))
            await self.close_idle()

    async def close_idle(self) -> None:
        """Close the connections no turn used for `idle_seconds`."""
        cutoff = time.monotonic() - self._idle
        idle = [key for key, o in self._open.items() if o.used < cutoff]
        for key in idle:
            entry = self._open.pop(key)
            log.info("MCP server %r of session %s: closed after %.0f s idle", key[1], key[0], self._idle)
            with contextlib.suppress(Exception):
                await entry.connection.close()


class _SessionConnection(McpConnection):
    """A connection that counts its calls as use, so a long turn does not see it closed for idleness."""

    entry: _Open | None = None

    async def call(self, tool: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        if self.entry is not None:
            self.entry.used = time.monotonic()
        return await super().call(tool, arguments)


def _key(server: SessionMcpServer) -> _Key:
    return (server.session_id, server.name, server.url, server.created_at.timestamp())
