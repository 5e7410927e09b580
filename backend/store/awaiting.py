"""Tool calls that wait for a person, in Postgres: the placeholder tool messages a step stored for them
(`awaiting`, `awaiting_state`; migration 0007), read with the call they answer, and moved on by compare-and-set.

A placeholder is an ordinary tool message whose content tells the model the call was not answered, so the history
is valid at every moment; an answer replaces that content (`resolve`). Every change is a compare-and-set on the
call's state, so a resent answer, two pods answering at once, or the expiry sweeper racing an answer change it once.
The frontend tools a host app declared for a session live here too: a continuation that an answer starts offers them
again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
import orjson

from backend.store.models import AwaitingKind, AwaitingState
from backend.store.postgres import _outage_is_unavailable, keep_live_tokens
from backend.store.sessions import SessionStore

OPEN_STATES: tuple[AwaitingState, ...] = ("waiting", "approved")
"""A call in one of these states still holds its placeholder's place for an answer or for its run."""

_SELECT = """
SELECT t.tool_call_id, t.awaiting, t.awaiting_state, t.name, t.content, t.created_at, t.sequence,
       t.created_at + make_interval(secs => $2) AS expires_at, a.tool_calls, a.write_key, a.sequence AS asked_in
FROM chat_messages t
CROSS JOIN LATERAL (
    SELECT tool_calls, write_key, sequence FROM chat_messages a
    WHERE a.session_id = t.session_id AND a.role = 'assistant' AND a.sequence < t.sequence
    ORDER BY a.sequence DESC LIMIT 1
) a
"""


@dataclass(frozen=True, slots=True)
class AwaitingCall:
    tool_call_id: str
    kind: AwaitingKind
    state: AwaitingState
    tool_name: str
    input: dict[str, Any]
    """The call's arguments, as the model sent them."""
    content: str | None
    """What the model reads as the call's result: the placeholder until an answer replaced it."""
    created_at: datetime
    expires_at: datetime
    sequence: int
    """Sequence of the call's tool message (its placeholder, then its answer)."""
    asked_in: int
    """Sequence of the assistant message that made the call: the calls of one message are answered together."""
    step_end: int
    """Sequence of the last tool message of that step (the step's messages are stored together, in order)."""
    turn_id: str | None
    """The turn whose step made the call (from its write key): its message id is the one a continuation extends."""

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_STATES


def _call(row: asyncpg.Record) -> AwaitingCall:
    calls: list[dict[str, Any]] = row["tool_calls"] or []
    arguments: Any = {}
    for call in calls:
        if call.get("id") == row["tool_call_id"]:
            try:
                arguments = orjson.loads(call.get("function", {}).get("arguments") or "{}")
            except orjson.JSONDecodeError:
                arguments = {}
            break
    write_key: str | None = row["write_key"]
    return AwaitingCall(
        tool_call_id=row["tool_call_id"],
        kind=row["awaiting"],
        state=row["awaiting_state"],
        tool_name=row["name"] or "",
        input=arguments if isinstance(arguments, dict) else {},
        content=row["content"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        sequence=row["sequence"],
        asked_in=row["asked_in"],
        step_end=row["asked_in"] + len(calls),
        turn_id=write_key.rsplit(":", 2)[0] if write_key else None,
    )


class AwaitingCalls:
    """The calls of every session that wait (or waited) for a person. `timeout_seconds`: how long an unanswered
    call stays open (`COPILOT_HUMAN_INPUT_TIMEOUT_SECONDS`)."""

    def __init__(self, pool: asyncpg.Pool, sessions: SessionStore, *, timeout_seconds: float) -> None:
        self._pool = pool
        self._sessions = sessions
        self.timeout_seconds = timeout_seconds

    @_outage_is_unavailable
    async def open_calls(self, session_id: UUID) -> list[AwaitingCall]:
        """The session's calls still waiting for an answer or approved and not yet run, oldest first (those past
        their expiry included until the sweeper closes them; `expires_at` says so)."""
        rows = await self._pool.fetch(
            _SELECT + "WHERE t.session_id = $1 AND t.awaiting_state IN ('waiting', 'approved') ORDER BY t.sequence",
            session_id,
            self.timeout_seconds,
        )
        return [_call(r) for r in rows]

    async def find(self, session_id: UUID, tool_call_id: str) -> AwaitingCall | None:
        """The call `tool_call_id` of the session if it waited for a person, whatever its state; else None."""
        return (await self.find_all(session_id, [tool_call_id])).get(tool_call_id)

    async def find_all(self, session_id: UUID, tool_call_ids: Sequence[str]) -> dict[str, AwaitingCall]:
        """Those of the calls `tool_call_ids` of the session that waited for a person, whatever their state, by id,
        in one query. The session's writes kept in Redis are stored first (a step saved while Postgres was down
        holds its calls)."""
        await self._sessions.store_pending(session_id)
        return await self._find_all(session_id, list(tool_call_ids))

    @_outage_is_unavailable
    async def _find_all(self, session_id: UUID, tool_call_ids: list[str]) -> dict[str, AwaitingCall]:
        rows = await self._pool.fetch(
            _SELECT + "WHERE t.session_id = $1 AND t.tool_call_id = ANY($3::text[]) AND t.role = 'tool' "
            "AND t.awaiting IS NOT NULL",
            session_id,
            self.timeout_seconds,
            tool_call_ids,
        )
        return {call.tool_call_id: call for call in map(_call, rows)}

    @_outage_is_unavailable
    async def asked_with(self, session_id: UUID, asked_in: int) -> list[AwaitingCall]:
        """Every call of the assistant message at sequence `asked_in` that waited for a person, in call order."""
        rows = await self._pool.fetch(
            _SELECT + "WHERE t.session_id = $1 AND t.awaiting IS NOT NULL AND a.sequence = $3 ORDER BY t.sequence",
            session_id,
            self.timeout_seconds,
            asked_in,
        )
        return [_call(r) for r in rows]

    async def resolve(
        self,
        session_id: UUID,
        tool_call_id: str,
        *,
        expected: Sequence[AwaitingState],
        state: AwaitingState,
        content: str | None = None,
        token_count: int = 0,
    ) -> bool:
        """Move the call from one of the `expected` states to `state`, putting `content` (counted `token_count`
        tokens) in place of its placeholder when given. False when the call is not in an expected state (answered
        by someone else first, expired, settled by a new message): nothing changed."""
        await self._sessions.store_pending(session_id)  # a step kept in Redis may hold the placeholder
        changed = await self._resolve(session_id, tool_call_id, list(expected), state, content, token_count)
        if changed:
            await self._sessions.messages_changed(session_id)
        return changed

    @_outage_is_unavailable
    async def _resolve(
        self,
        session_id: UUID,
        tool_call_id: str,
        expected: list[str],
        state: str,
        content: str | None,
        token_count: int,
    ) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            old = await conn.fetchrow(
                "SELECT m.id, m.token_count, m.sequence, s.summary_through FROM chat_messages m "
                "JOIN chat_sessions s ON s.id = m.session_id WHERE m.session_id = $1 AND m.role = 'tool' "
                "AND m.tool_call_id = $2 AND m.awaiting_state = ANY($3::text[]) FOR UPDATE OF m, s",
                session_id,
                tool_call_id,
                expected,
            )
            if old is None:
                return False
            if content is None:
                await conn.execute("UPDATE chat_messages SET awaiting_state = $2 WHERE id = $1", old["id"], state)
                return True
            await conn.execute(
                "UPDATE chat_messages SET awaiting_state = $2, content = $3, token_count = $4 WHERE id = $1",
                old["id"],
                state,
                content,
                token_count,
            )
            await keep_live_tokens(conn, session_id, old, token_count)
        return True

    @_outage_is_unavailable
    async def reply_turn_id(self, session_id: UUID, asked_in: int) -> str | None:
        """The turn that began the reply the message at `asked_in` belongs to: the turn of the first assistant
        message after the user message before it (a continuation that asked again belongs to the same reply)."""
        write_key: str | None = await self._pool.fetchval(
            "SELECT write_key FROM chat_messages WHERE session_id = $1 AND role = 'assistant' "
            "AND write_key IS NOT NULL AND sequence <= $2 AND sequence > coalesce((SELECT max(sequence) "
            "FROM chat_messages WHERE session_id = $1 AND role = 'user' AND sequence < $2), 0) "
            "ORDER BY sequence LIMIT 1",
            session_id,
            asked_in,
        )
        return write_key.rsplit(":", 2)[0] if write_key else None

    @_outage_is_unavailable
    async def overdue(self, *, limit: int = 100) -> list[tuple[UUID, str]]:
        """Open calls past their expiry, across sessions: (session id, tool call id), the oldest first."""
        rows = await self._pool.fetch(
            "SELECT session_id, tool_call_id FROM chat_messages WHERE awaiting_state IN ('waiting', 'approved') "
            "AND created_at <= now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
            self.timeout_seconds,
            limit,
        )
        return [(r["session_id"], r["tool_call_id"]) for r in rows]

    @_outage_is_unavailable
    async def set_frontend_tools(self, session_id: UUID, tools: list[dict[str, Any]]) -> None:
        """Remember the frontend tools the host app declared for the session (an empty list forgets them)."""
        await self._pool.execute(
            "UPDATE chat_sessions SET frontend_tools = $2::jsonb WHERE id = $1 "
            "AND frontend_tools IS DISTINCT FROM $2::jsonb",
            session_id,
            tools or None,
        )

    @_outage_is_unavailable
    async def frontend_tools(self, session_id: UUID) -> list[dict[str, Any]]:
        """The frontend tools last declared for the session ([] when none)."""
        raw = await self._pool.fetchval("SELECT frontend_tools FROM chat_sessions WHERE id = $1", session_id)
        return list(raw) if raw else []
