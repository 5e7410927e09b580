"""The session's active turn in Postgres: an opaque id and the deadline of its owner's lease, on the session row.

This is the truth behind the Redis pointer (`streams/active.py`), so a flushed or restarted Redis cannot let a second
turn start while one runs. A turn that comes with a user message claims it in the append's own transaction
(`ChatRepository.append_messages(claim=...)`); a turn without one (the continuation of an operation) with `claim`
here. Either claim succeeds only when the session is free or its holder's lease lapsed. Owners push their leases
forward in one statement per pod (`renew`); the end of a turn clears it with a compare-and-set on its id: in the
append of its last step (`append_messages(release=...)`), or here (`release`) when it ended otherwise. A turn whose
owner stopped renewing is found with `lapsed` and cleared with `release_lapsed`.

Lease deadlines are computed and compared on the database's clock, so pods whose clocks disagree still agree on
whether a lease lapsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

import asyncpg


@dataclass(frozen=True, slots=True)
class Holder:
    turn_id: str
    lapsed: bool
    """Its owner stopped renewing the lease: whoever sees this may close the turn and clear it."""


class ActiveTurnStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def claim(self, session_id: UUID, turn_id: str, *, lease_seconds: float) -> Holder | None:
        """Claim the session for `turn_id` if it is free or its holder's lease lapsed: None when claimed, else the
        holder (which may be `turn_id` itself). Raises `LookupError` when the session does not exist."""
        while True:
            row = await self._pool.fetchrow(
                "WITH claimed AS (UPDATE chat_sessions SET active_turn_id = $2, "
                "active_turn_until = now() + make_interval(secs => $3) "
                "WHERE id = $1 AND (active_turn_id IS NULL OR active_turn_until <= now()) RETURNING id) "
                # The outer read sees the row as it was before the update: the holder we lost to, if any.
                "SELECT EXISTS (SELECT 1 FROM claimed) AS claimed, active_turn_id, "
                "active_turn_until <= now() AS lapsed FROM chat_sessions WHERE id = $1",
                session_id,
                turn_id,
                lease_seconds,
            )
            if row is None:
                raise LookupError(f"session {session_id} does not exist")
            if row["claimed"]:
                return None
            if row["active_turn_id"] is not None:
                return Holder(row["active_turn_id"], row["lapsed"])
            # A concurrent claim committed after this statement's snapshot was taken: read again.

    async def holder(self, session_id: UUID) -> Holder | None:
        row = await self._pool.fetchrow(
            "SELECT active_turn_id, active_turn_until <= now() AS lapsed FROM chat_sessions "
            "WHERE id = $1 AND active_turn_id IS NOT NULL",
            session_id,
        )
        return Holder(row["active_turn_id"], row["lapsed"]) if row else None

    async def release(self, session_id: UUID, turn_id: str) -> bool:
        """Free the session if `turn_id` holds it (compare-and-set); True if it did."""
        status = await self._pool.execute(
            "UPDATE chat_sessions SET active_turn_id = NULL, active_turn_until = NULL "
            "WHERE id = $1 AND active_turn_id = $2",
            session_id,
            turn_id,
        )
        return bool(status == "UPDATE 1")

    async def release_lapsed(self, session_id: UUID, turn_id: str) -> bool:
        """Free the session if `turn_id` holds it under a lapsed lease. True when `turn_id` no longer holds the
        session under a live lease (freed now, or before); False while its owner keeps the lease fresh."""
        held = await self._pool.fetchval(
            "WITH cleared AS (UPDATE chat_sessions SET active_turn_id = NULL, active_turn_until = NULL "
            "WHERE id = $1 AND active_turn_id = $2 AND active_turn_until <= now() RETURNING id) "
            # Both parts see the row as it was before the update: a live lease is the only way it stays held.
            "SELECT EXISTS (SELECT 1 FROM chat_sessions WHERE id = $1 AND active_turn_id = $2 "
            "AND active_turn_until > now())",
            session_id,
            turn_id,
        )
        return not held

    async def renew(self, turns: Mapping[str, UUID], *, lease_seconds: float) -> set[str]:
        """Push the leases of `turns` (turn id → session id) forward in one statement; returns the turn ids that
        still held their session (a missing one was cleared by someone who found its lease lapsed)."""
        if not turns:
            return set()
        rows = await self._pool.fetch(
            "UPDATE chat_sessions s SET active_turn_until = now() + make_interval(secs => $3) "
            "FROM unnest($1::uuid[], $2::text[]) AS t(session_id, turn_id) "
            "WHERE s.id = t.session_id AND s.active_turn_id = t.turn_id RETURNING s.active_turn_id",
            list(turns.values()),
            list(turns.keys()),
            lease_seconds,
        )
        return {r["active_turn_id"] for r in rows}

    async def lapsed(self, *, limit: int = 100) -> list[tuple[UUID, str]]:
        """Sessions whose active turn's owner stopped renewing its lease: (session id, turn id), oldest first."""
        rows = await self._pool.fetch(
            "SELECT id, active_turn_id FROM chat_sessions WHERE active_turn_until <= now() "
            "ORDER BY active_turn_until LIMIT $1",
            limit,
        )
        return [(r["id"], r["active_turn_id"]) for r in rows]
