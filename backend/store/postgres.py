"""Postgres access for sessions and messages: the source of truth. Every query of those tables is here, but the
session's active turn (`active_turns.py`; only its claim and the release by a turn's last step ride in the append
below).

Messages are append-only. An append locks the session row, allocates the next sequences from its counter and
inserts the rows in one transaction, so concurrent writers get gap-free, unique sequences (never "save
`messages[count:]`", which lost messages when two writers raced in the reference system). The same transaction
returns the updated session row, so the cache can be brought up to date without reading it back. That transaction
is one statement, a call of the function `copilot_append_messages` (migration 0009): one round trip, where the
same steps sent from here took six (BEGIN, lock, read of the stored ids, insert, update, COMMIT).

A pooled connection is handed back without a reset query (asyncpg's default, `pg_advisory_unlock_all(); CLOSE ALL;
UNLISTEN *; RESET ALL`, is a server round trip and a transaction of its own on every release): the statements here
never change session state, since they take no session-level advisory locks, LISTEN, SET or hold cursors open.
asyncpg still rolls back a transaction left open. That is also what PgBouncer's transaction pooling asks for: a
statement's session state would stay on a server connection other clients get next (the migrations' advisory lock
is a transaction's for the same reason; prepared statements are turned off with `statement_cache_size=0`).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any, ParamSpec, TypeVar
from uuid import UUID, uuid4

import asyncpg
import orjson

from backend.errors import StorageUnavailable
from backend.store.models import (
    ActiveTurnClaim,
    ActiveTurnHeld,
    AppendResult,
    ChatMessage,
    ChatSession,
    ModelUsage,
    NewMessage,
)

_P = ParamSpec("_P")
_T = TypeVar("_T")

_OUTAGE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable (ConnectionError is one)
    TimeoutError,  # a connect that did not complete
    asyncpg.PostgresConnectionError,  # the connection is gone, or the server refused it
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, admin shutdown
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections while it restarts
    asyncpg.InterfaceError,  # "connection is closed": it died under a pooled connection
)
"""What Postgres failing looks like through asyncpg. Errors of the SQL itself (constraints, syntax) are not here:
they are bugs or bad input, not an outage, and stay what they are."""


def _outage_is_unavailable(method: Callable[_P, Awaitable[_T]]) -> Callable[_P, Awaitable[_T]]:
    """Translate an outage into `StorageUnavailable`, once, where it comes in."""

    @functools.wraps(method)
    async def translated(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return await method(*args, **kwargs)
        except _OUTAGE as e:
            raise StorageUnavailable("The database is unavailable right now; please try again shortly.") from e

    return translated


_SESSION_COLUMNS = (
    "id, user_id, title, metadata, message_count, prompt_tokens, completion_tokens, created_at, updated_at, "
    "summary, summary_tokens, summary_through, live_tokens"
)
_MESSAGE_COLUMNS = (
    "id, session_id, sequence, role, content, tool_calls, tool_call_id, name, refusal, client_message_id, "
    "token_count, created_at, reasoning, model, usage, awaiting, awaiting_state"
)

# An append in one round trip: a function of migration 0009 (its comment there says what it returns). Its result
# columns are the two dataclasses' fields in order, from these positions on.
_APPEND = "SELECT * FROM copilot_append_messages(" + ", ".join(f"${i}" for i in range(1, 21)) + ")"
_SESSION_AT = 4
_MESSAGE_AT = _SESSION_AT + len(fields(ChatSession))
_NO_SUCH_SESSION = "CP001"
_ACTIVE_TURN_HELD = "CP002"
"""The SQLSTATEs the function raises; the holder's turn id is the error's detail."""

_USAGE_BY_MODEL = """
SELECT model, count(*)::int AS messages,
       coalesce(sum((usage->>'prompt_tokens')::bigint), 0)::bigint AS prompt_tokens,
       coalesce(sum((usage->>'completion_tokens')::bigint), 0)::bigint AS completion_tokens,
       coalesce(sum((usage->>'cached_tokens')::bigint), 0)::bigint AS cached_tokens,
       coalesce(sum((usage->>'reasoning_tokens')::bigint), 0)::bigint AS reasoning_tokens
FROM chat_messages WHERE session_id = $1 AND usage IS NOT NULL
GROUP BY model ORDER BY model NULLS LAST
"""


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, schema="pg_catalog", encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads
        )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release without a server round trip: see the module docstring for why there is nothing to reset."""


QueryObserver = Callable[[str, float, bool], None]
"""Hears each statement: its first keyword (`SELECT`, `INSERT`, `WITH`, ...), its duration, whether it failed."""


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, statement_cache_size: int = 100, observe: QueryObserver | None = None
) -> asyncpg.Pool:
    """`statement_cache_size=0` behind a transaction-pooling PgBouncer (see `Settings.db_statement_cache_size`).
    With `observe`, every statement of the pool's connections is reported (asyncpg's query logger, which times
    each statement and calls back once it has ended)."""
    init = _init_connection
    if observe is not None:

        def report(query: Any) -> None:
            observe(_statement(query.query), query.elapsed, query.exception is not None)

        async def init(conn: asyncpg.Connection) -> None:
            await _init_connection(conn)
            conn.add_query_logger(report)

    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=init,
        reset=_keep_session,
        statement_cache_size=statement_cache_size,
    )
    assert pool is not None
    return pool


@functools.lru_cache(maxsize=512)
def _statement(query: str) -> str:
    """The first keyword of a statement (the package's statements are constants: this is looked up once each)."""
    words = query.split(None, 1)
    return words[0].upper().rstrip(";") if words else "?"


_SESSION_FIELDS = tuple(c.strip() for c in _SESSION_COLUMNS.split(","))


def _session(row: asyncpg.Record) -> ChatSession:
    return ChatSession(**{name: row[name] for name in _SESSION_FIELDS})


def _message(row: asyncpg.Record) -> ChatMessage:
    return ChatMessage(**dict(row.items()))


async def keep_live_tokens(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy, session_id: UUID, old: asyncpg.Record, token_count: int
) -> None:
    """After a stored message's content changed in place (`old`: its `sequence` and former `token_count`, with the
    session's `summary_through`): the session's live token total follows, unless a summary already folded it."""
    if old["sequence"] > old["summary_through"]:
        await conn.execute(
            "UPDATE chat_sessions SET live_tokens = live_tokens + $2, updated_at = now() WHERE id = $1",
            session_id,
            token_count - old["token_count"],
        )


class ChatRepository:
    """Sessions and messages in Postgres. Ownership is part of every session query: a session of another user
    is indistinguishable from a missing one."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @_outage_is_unavailable
    async def create_session(
        self, user_id: str, *, title: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ChatSession:
        row = await self._pool.fetchrow(
            f"INSERT INTO chat_sessions (id, user_id, title, metadata) VALUES ($1, $2, $3, $4) "
            f"RETURNING {_SESSION_COLUMNS}",
            uuid4(),
            user_id,
            title,
            metadata or {},
        )
        assert row is not None
        return _session(row)

    @_outage_is_unavailable
    async def create_session_with_id(
        self, session_id: UUID, user_id: str, *, metadata: dict[str, Any] | None = None
    ) -> tuple[ChatSession, bool]:
        """The session `session_id`, created for `user_id` if no session has that id, and whether this call created
        it. Otherwise the existing one, whoever owns it (the caller checks): two requests may race to create it."""
        row = await self._pool.fetchrow(
            f"INSERT INTO chat_sessions (id, user_id, metadata) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING "
            f"RETURNING {_SESSION_COLUMNS}",
            session_id,
            user_id,
            metadata or {},
        )
        if row is not None:
            return _session(row), True
        # A separate statement: it sees the row another transaction committed meanwhile.
        row = await self._pool.fetchrow(f"SELECT {_SESSION_COLUMNS} FROM chat_sessions WHERE id = $1", session_id)
        assert row is not None
        return _session(row), False

    @_outage_is_unavailable
    async def get_session(self, session_id: UUID) -> ChatSession | None:
        row = await self._pool.fetchrow(f"SELECT {_SESSION_COLUMNS} FROM chat_sessions WHERE id = $1", session_id)
        return _session(row) if row else None

    @_outage_is_unavailable
    async def list_sessions(
        self, user_id: str, *, limit: int, before: tuple[datetime, UUID] | None = None
    ) -> list[ChatSession]:
        """The user's sessions, most recently updated first, starting after the keyset cursor `before`."""
        if before is None:
            rows = await self._pool.fetch(
                f"SELECT {_SESSION_COLUMNS} FROM chat_sessions WHERE user_id = $1 "
                "ORDER BY updated_at DESC, id DESC LIMIT $2",
                user_id,
                limit,
            )
        else:
            rows = await self._pool.fetch(
                f"SELECT {_SESSION_COLUMNS} FROM chat_sessions WHERE user_id = $1 AND (updated_at, id) < ($2, $3) "
                "ORDER BY updated_at DESC, id DESC LIMIT $4",
                user_id,
                before[0],
                before[1],
                limit,
            )
        return [_session(r) for r in rows]

    @_outage_is_unavailable
    async def update_title(self, session_id: UUID, user_id: str, title: str | None) -> ChatSession | None:
        row = await self._pool.fetchrow(
            f"UPDATE chat_sessions SET title = $3, updated_at = now() WHERE id = $1 AND user_id = $2 "
            f"RETURNING {_SESSION_COLUMNS}",
            session_id,
            user_id,
            title,
        )
        return _session(row) if row else None

    @_outage_is_unavailable
    async def delete_session(self, session_id: UUID, user_id: str) -> bool:
        status = await self._pool.execute(
            "DELETE FROM chat_sessions WHERE id = $1 AND user_id = $2", session_id, user_id
        )
        return bool(status == "DELETE 1")

    @_outage_is_unavailable
    async def append_messages(
        self,
        session_id: UUID,
        messages: Sequence[NewMessage],
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        claim: ActiveTurnClaim | None = None,
        settle_awaiting: bool = False,
        release: str | None = None,
    ) -> AppendResult:
        """Append `messages` (and add usage to the session totals) in one transaction, one round trip; the result
        carries the session row as that transaction left it.

        A message whose `client_message_id` is already stored is not written again: the stored row is returned in
        its place and its id is listed in `duplicates`. The same holds for a `write_key` already stored (listed in
        `repeated_keys`); such a key means an earlier attempt of this very append committed, so the usage is not
        added again either. Raises `LookupError` when the session does not exist.

        With `claim`, the same transaction claims the session's active turn (no extra round trip: the row is
        read and written anyway). If another id holds it under a live lease, or `claim.turn_id` itself does,
        `ActiveTurnHeld` is raised and nothing is written.

        With `settle_awaiting` (a new user message), the session's calls still waiting for a person are closed as
        `unanswered` in the same transaction: their placeholders already tell the model so.

        With `release` (a turn id: the turn's last step), the same transaction frees the session's active turn if
        that turn holds it, as `ActiveTurnStore.release` would in a transaction of its own.
        """
        try:
            rows = await self._pool.fetch(
                _APPEND,
                session_id,
                [m.role for m in messages],
                [m.content for m in messages],
                # As JSON text: asyncpg would read a list of lists as a two-dimensional array.
                [None if m.tool_calls is None else orjson.dumps(m.tool_calls).decode() for m in messages],
                [m.tool_call_id for m in messages],
                [m.name for m in messages],
                [m.refusal for m in messages],
                [m.client_message_id for m in messages],
                [m.token_count for m in messages],
                [m.write_key for m in messages],
                [m.reasoning for m in messages],
                [m.model for m in messages],
                [None if m.usage is None else orjson.dumps(m.usage).decode() for m in messages],
                [m.awaiting for m in messages],
                prompt_tokens,
                completion_tokens,
                claim.turn_id if claim else None,
                claim.lease_seconds if claim else None,
                settle_awaiting,
                release,
            )
        except asyncpg.PostgresError as e:
            if e.sqlstate == _NO_SUCH_SESSION:
                raise LookupError(f"session {session_id} does not exist") from e
            if e.sqlstate == _ACTIVE_TURN_HELD:
                raise ActiveTurnHeld(e.detail or "") from e
            raise
        *stored, session = rows
        duplicates: set[str] = set()
        repeated: set[str] = set()
        for m, r in zip(messages, stored, strict=True):
            if r["found_client"] and m.client_message_id is not None:
                duplicates.add(m.client_message_id)
            if r["found_key"] and m.write_key is not None:
                repeated.add(m.write_key)
        return AppendResult(
            [ChatMessage(*r[_MESSAGE_AT:]) for r in stored],
            frozenset(duplicates),
            ChatSession(*session[_SESSION_AT:_MESSAGE_AT]),
            frozenset(repeated),
            session["settled"],
        )

    @_outage_is_unavailable
    async def commit_summary(
        self, session_id: UUID, *, expected_through: int, through: int, summary: str, summary_tokens: int
    ) -> ChatSession | None:
        """Replace the rolling summary if it still covers `expected_through` (compare-and-set); None otherwise.

        The live token total drops by the tokens of the messages the new summary folds in.
        """
        row = await self._pool.fetchrow(
            "UPDATE chat_sessions s SET summary = $4, summary_tokens = $5, summary_through = $3, "
            "live_tokens = s.live_tokens - coalesce((SELECT sum(m.token_count) FROM chat_messages m "
            "WHERE m.session_id = s.id AND m.sequence > $2 AND m.sequence <= $3), 0) "
            f"WHERE s.id = $1 AND s.summary_through = $2 AND $3 > $2 RETURNING {_SESSION_COLUMNS}",
            session_id,
            expected_through,
            through,
            summary,
            summary_tokens,
        )
        return _session(row) if row else None

    @_outage_is_unavailable
    async def replace_tool_result(
        self, session_id: UUID, tool_call_id: str, content: str, token_count: int
    ) -> ChatMessage | None:
        """Replace the content of the tool message answering `tool_call_id` (a long-running operation's pending
        placeholder) and keep the session's live token total right. None if there is no such message."""
        async with self._pool.acquire() as conn, conn.transaction():
            old = await conn.fetchrow(
                "SELECT m.token_count, m.sequence, s.summary_through FROM chat_messages m "
                "JOIN chat_sessions s ON s.id = m.session_id "
                "WHERE m.session_id = $1 AND m.role = 'tool' AND m.tool_call_id = $2 FOR UPDATE OF m, s",
                session_id,
                tool_call_id,
            )
            if old is None:
                return None
            row = await conn.fetchrow(
                f"UPDATE chat_messages SET content = $3, token_count = $4 WHERE session_id = $1 AND role = 'tool' "
                f"AND tool_call_id = $2 RETURNING {_MESSAGE_COLUMNS}",
                session_id,
                tool_call_id,
                content,
                token_count,
            )
            await keep_live_tokens(conn, session_id, old, token_count)
        return _message(row) if row else None

    @_outage_is_unavailable
    async def usage_by_model(self, session_id: UUID) -> list[ModelUsage]:
        """The usage stored with the session's messages, summed per model (by model name)."""
        rows = await self._pool.fetch(_USAGE_BY_MODEL, session_id)
        return [ModelUsage(**dict(r)) for r in rows]

    @_outage_is_unavailable
    async def get_messages(self, session_id: UUID, *, after: int = 0, limit: int | None = None) -> list[ChatMessage]:
        """Messages with sequence > `after`, oldest first, at most `limit`."""
        rows = await self._pool.fetch(
            f"SELECT {_MESSAGE_COLUMNS} FROM chat_messages WHERE session_id = $1 AND sequence > $2 "
            "ORDER BY sequence LIMIT $3",
            session_id,
            after,
            limit,
        )
        return [_message(r) for r in rows]

    @_outage_is_unavailable
    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")
