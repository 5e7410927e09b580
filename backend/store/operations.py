"""Long-running operations in Postgres (`chat_operations`): the record of each one, the lock that keeps it from
running twice, its claim and settlement, and the deadlines after which an unfinished one is failed.

An operation moves `pending → completing → completed | failed` by compare-and-set statements, so a duplicate
completion (a retried webhook, a redelivered stream entry) changes nothing, and a completion whose handler died
midway can be taken over once its claim is stale. The lock ("one operation per session, tool and arguments") is a
lease on the row (`lock_until`) under a partial unique index: renewed while the work runs, cleared when the
operation settles, and free for the next caller once it lapsed (its holder died). Redis keeps a copy of the lock as
the fast path (`streams/operation_locks.py`); what is here survives a Redis flush.

Times are computed and compared on the database's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from uuid import UUID

import asyncpg

OperationStatus = Literal["pending", "completing", "completed", "failed"]

_COLUMNS = "id, session_id, user_id, tool_call_id, tool_name, arguments_digest, task_id, status"


@dataclass(frozen=True, slots=True)
class Operation:
    operation_id: str
    session_id: UUID
    user_id: str
    tool_call_id: str
    tool_name: str
    arguments_digest: str
    """Digest of the call's arguments: with the session and the tool, what the lock is about."""
    task_id: str
    """The turn id of the continuation: the stream a browser follows for this operation."""
    status: OperationStatus = "pending"


def _operation(row: asyncpg.Record) -> Operation:
    return Operation(
        operation_id=row["id"],
        session_id=row["session_id"],
        user_id=row["user_id"],
        tool_call_id=row["tool_call_id"],
        tool_name=row["tool_name"],
        arguments_digest=row["arguments_digest"],
        task_id=row["task_id"],
        status=row["status"],
    )


class OperationStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, op: Operation, *, deadline_seconds: float, lock_seconds: float) -> Operation | None:
        """Record a new pending operation holding the lock for its session, tool and arguments: None when recorded,
        else the open operation that holds the lock (nothing is written then). A lock whose lease lapsed is taken
        over; its operation stays open until settled or failed at its deadline."""
        while True:
            created = await self._pool.fetchval(
                "INSERT INTO chat_operations (id, session_id, user_id, tool_call_id, tool_name, arguments_digest, "
                "task_id, deadline, lock_until) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                "now() + make_interval(secs => $8), now() + make_interval(secs => $9)) "
                "ON CONFLICT DO NOTHING RETURNING true",
                op.operation_id,
                op.session_id,
                op.user_id,
                op.tool_call_id,
                op.tool_name,
                op.arguments_digest,
                op.task_id,
                deadline_seconds,
                lock_seconds,
            )
            if created:
                return None
            row = await self._pool.fetchrow(
                f"SELECT {_COLUMNS}, lock_until <= now() AS lapsed FROM chat_operations "
                "WHERE session_id = $1 AND tool_name = $2 AND arguments_digest = $3 AND lock_until IS NOT NULL",
                op.session_id,
                op.tool_name,
                op.arguments_digest,
            )
            if row is None:
                continue  # released in between: try again
            if not row["lapsed"]:
                return _operation(row)
            await self._pool.execute(
                "UPDATE chat_operations SET lock_until = NULL WHERE id = $1 AND lock_until <= now()", row["id"]
            )

    async def get(self, operation_id: str) -> Operation | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM chat_operations WHERE id = $1", operation_id)
        return _operation(row) if row else None

    async def renew_lock(self, operation_id: str, *, seconds: float) -> bool:
        """Extend the lock's lease while the work runs; False once the operation settled or lost its lock."""
        status = await self._pool.execute(
            "UPDATE chat_operations SET lock_until = now() + make_interval(secs => $2) "
            "WHERE id = $1 AND lock_until IS NOT NULL AND settled_at IS NULL",
            operation_id,
            seconds,
        )
        return bool(status == "UPDATE 1")

    async def delegate(self, operation_id: str, *, seconds: float) -> bool:
        """The work went to an external service: its deadline and its lock (if it still holds it) now run
        `seconds` from now. Changes nothing once the operation settled (a fast service may have answered already)."""
        status = await self._pool.execute(
            "UPDATE chat_operations SET deadline = now() + make_interval(secs => $2), "
            "lock_until = CASE WHEN lock_until IS NULL THEN NULL ELSE now() + make_interval(secs => $2) END "
            "WHERE id = $1 AND settled_at IS NULL",
            operation_id,
            seconds,
        )
        return bool(status == "UPDATE 1")

    async def claim(self, operation_id: str, *, stale_after_seconds: float) -> str:
        """Take the right to complete the operation: `claimed`, or why not (`missing`, `completing`, `completed`,
        `failed`). A claim older than `stale_after_seconds` is taken over (its holder died)."""
        row = await self._pool.fetchrow(
            "WITH claimed AS (UPDATE chat_operations SET status = 'completing', claimed_at = now() "
            "WHERE id = $1 AND (status = 'pending' OR (status = 'completing' "
            "AND claimed_at <= now() - make_interval(secs => $2))) RETURNING id) "
            "SELECT EXISTS (SELECT 1 FROM claimed) AS claimed, status FROM chat_operations WHERE id = $1",
            operation_id,
            stale_after_seconds,
        )
        if row is None:
            return "missing"
        if row["claimed"]:
            return "claimed"
        # Still `pending` as this statement's snapshot saw it: a concurrent claimer got there first.
        return "completing" if row["status"] == "pending" else str(row["status"])

    async def settle(self, operation_id: str, status: Literal["completed", "failed"]) -> bool:
        """End a claimed operation and free its lock; False (nothing changed) unless it was `completing`."""
        result = await self._pool.execute(
            "UPDATE chat_operations SET status = $2, settled_at = now(), lock_until = NULL "
            "WHERE id = $1 AND status = 'completing'",
            operation_id,
            status,
        )
        return bool(result == "UPDATE 1")

    async def postpone(self, operation_id: str, *, seconds: float) -> None:
        """Move an unfinished operation's deadline to `seconds` from now (a settled one is left alone)."""
        await self._pool.execute(
            "UPDATE chat_operations SET deadline = now() + make_interval(secs => $2) "
            "WHERE id = $1 AND settled_at IS NULL",
            operation_id,
            seconds,
        )

    async def overdue(self, *, limit: int = 100) -> list[str]:
        """Unfinished operations past their deadline, the most overdue first."""
        rows = await self._pool.fetch(
            "SELECT id FROM chat_operations WHERE settled_at IS NULL AND deadline <= now() ORDER BY deadline LIMIT $1",
            limit,
        )
        return [r["id"] for r in rows]

    async def open_count(self) -> tuple[int, float]:
        """How many operations are unsettled, and the age in seconds of the oldest (0 when none): for the metrics.
        Reads the partial index of open operations only."""
        row = await self._pool.fetchrow(
            "SELECT count(*) AS open, coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest "
            "FROM chat_operations WHERE settled_at IS NULL"
        )
        assert row is not None
        return int(row["open"]), float(row["oldest"])
