"""The last Responses API response of each session in Postgres (`chat_response_chains`), for
`COPILOT_RESPONSES_STATE=server`: one row per session, replaced after every model call. An outage is
`StorageUnavailable`, as in `postgres.py`."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

import asyncpg

from backend.store.postgres import _outage_is_unavailable


@dataclass(frozen=True, slots=True)
class ChainLink:
    """What the provider holds of a session's conversation under `response_id`."""

    response_id: str
    covered: int
    """How many input items it holds: the input of that call and its reply, as we would send them again."""
    digest: str
    """A hash of those items."""


class ResponseChainStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @_outage_is_unavailable
    async def get(self, session_id: str) -> ChainLink | None:
        row = await self._pool.fetchrow(
            "SELECT response_id, covered, digest FROM chat_response_chains WHERE session_id = $1", UUID(session_id)
        )
        return None if row is None else ChainLink(row["response_id"], row["covered"], row["digest"])

    @_outage_is_unavailable
    async def put(self, session_id: str, link: ChainLink) -> None:
        """Remember `link` as the session's last response (a session deleted meanwhile keeps nothing)."""
        await self._pool.execute(
            "INSERT INTO chat_response_chains (session_id, response_id, covered, digest)"
            " SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM chat_sessions WHERE id = $1)"
            " ON CONFLICT (session_id) DO UPDATE SET response_id = excluded.response_id,"
            " covered = excluded.covered, digest = excluded.digest, updated_at = now()",
            UUID(session_id),
            link.response_id,
            link.covered,
            link.digest,
        )
