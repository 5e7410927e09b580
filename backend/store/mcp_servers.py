"""The MCP servers of sessions in Postgres (`chat_session_mcp_servers`): added, listed and removed by the session's
owner through the API; the headers are stored as given (sealed bytes, see `tools/mcp/sealed_headers.py`). An outage
is `StorageUnavailable` (503), as in `postgres.py`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from backend.store.postgres import _outage_is_unavailable


@dataclass(frozen=True, slots=True)
class SessionMcpServer:
    session_id: UUID
    name: str
    url: str
    headers: bytes
    """Sealed: only `HeaderSealer.open` reads them."""
    created_at: datetime


def _server(row: asyncpg.Record) -> SessionMcpServer:
    return SessionMcpServer(row["session_id"], row["name"], row["url"], row["headers"], row["created_at"])


class SessionMcpServerStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @_outage_is_unavailable
    async def add(self, session_id: UUID, name: str, url: str, headers: bytes, *, max_servers: int) -> str:
        """Store a server: `added`, or `taken` (the session has one of that name) or `full` (it has `max_servers`),
        nothing being written then. The count and the insert hold the session's row lock, so two concurrent adds
        cannot both pass the cap."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT 1 FROM chat_sessions WHERE id = $1 FOR UPDATE", session_id)
            taken = await conn.fetchval(
                "SELECT 1 FROM chat_session_mcp_servers WHERE session_id = $1 AND name = $2", session_id, name
            )
            if taken:
                return "taken"
            count = await conn.fetchval(
                "SELECT count(*) FROM chat_session_mcp_servers WHERE session_id = $1", session_id
            )
            if count >= max_servers:
                return "full"
            inserted = await conn.fetchval(
                "INSERT INTO chat_session_mcp_servers (session_id, name, url, headers) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                session_id,
                name,
                url,
                headers,
            )
            return "added" if inserted else "taken"

    @_outage_is_unavailable
    async def list(self, session_id: UUID) -> list[SessionMcpServer]:
        rows = await self._pool.fetch(
            "SELECT * FROM chat_session_mcp_servers WHERE session_id = $1 ORDER BY created_at, name", session_id
        )
        return [_server(r) for r in rows]

    @_outage_is_unavailable
    async def remove(self, session_id: UUID, name: str) -> bool:
        """Delete the server; False when the session has none of that name."""
        result = await self._pool.execute(
            "DELETE FROM chat_session_mcp_servers WHERE session_id = $1 AND name = $2", session_id, name
        )
        return bool(result != "DELETE 0")
