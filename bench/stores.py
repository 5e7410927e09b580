"""The benchmark's PostgreSQL database and Redis database: creating them, filling them, and reading their counters.

The service gets a database of its own (`copilot_bench`, dropped and created by each run) and a Redis database
number of its own (flushed by each run). Redis `INFO` counters are server-wide, so the machine should be idle
otherwise (the harness waits for CI to finish). Postgres counters are read for the benchmark's database only,
from a connection to another database so that reading them does not count.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from redis.asyncio import Redis

from backend.chat import protocol
from backend.chat.tokens import TokenCounter
from backend.store.cache import SessionCache
from backend.store.migrate import upgrade_dsn
from backend.store.models import NewMessage
from backend.store.postgres import ChatRepository, create_pool
from backend.store.sessions import SessionStore
from backend.streams.turns import TurnRegistry


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def recreate_database(admin_dsn: str, name: str) -> str:
    """Drop and create database `name` (connected through `admin_dsn`), migrate it; its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    dsn = with_database(admin_dsn, name)
    await upgrade_dsn(dsn)
    return dsn


async def settle(dsn: str) -> None:
    """VACUUM ANALYZE the service's tables after bulk seeding, so that autovacuum does not pick them up during the
    measurement that follows (a database in steady state, not one just loaded)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("VACUUM ANALYZE chat_sessions, chat_messages")
    finally:
        await conn.close()


@asynccontextmanager
async def session_store(dsn: str, redis: Redis) -> AsyncIterator[SessionStore]:
    """The project's own store on the benchmark's database and Redis (the cache stays coherent)."""
    pool = await create_pool(dsn, min_size=1, max_size=8)
    store = SessionStore(ChatRepository(pool), SessionCache(redis, ttl_seconds=3600))
    try:
        yield store
    finally:
        await store.close()
        await pool.close()


async def create_sessions(store: SessionStore, user_id: str, count: int) -> list[uuid.UUID]:
    """`count` sessions, with a title so no turn schedules a title request to the model."""
    ids: list[uuid.UUID] = []
    for start in range(0, count, 50):
        batch = await asyncio.gather(*(store.create(user_id, title="bench") for _ in range(min(50, count - start))))
        ids += [s.id for s in batch]
    return ids


def history_messages(count: int) -> list[dict[str, str]]:
    """`count` short alternating user/assistant messages, starting with a user message: so short that even
    5,000 stay below every token threshold, and only the service's bound on live messages compacts them."""
    return [{"role": "user" if i % 2 else "assistant", "content": f"m{i}"} for i in range(1, count + 1)]


SUMMARY = " ".join(f"fact{i}" for i in range(300))
"""The rolling summary a seeded session over the live-message bound holds (about 600 tokens)."""


def live_count(size: int, max_live: int) -> int:
    """Messages left live in a seeded session of `size`: all of them up to the bound, else as many as the bound
    allows when a turn starts without a compaction being due (the turn adds 2, which must not exceed it)."""
    if not max_live or size <= max_live:
        return size
    live = max_live - 2
    return live - live % 2  # the cut falls before a user message (odd sequences are user messages)


def history_prompt(size: int, max_live: int) -> list[dict[str, str]]:
    """What the model receives of a seeded session's history (the floor sends the same): the summary, if any, and
    the live messages."""
    live = live_count(size, max_live)
    messages = history_messages(size)[size - live :]
    if live == size:
        return messages
    return [{"role": "user", "content": f"<conversation_summary>\n{SUMMARY}\n</conversation_summary>"}, *messages]


async def insert_history(store: SessionStore, session_id: uuid.UUID, count: int) -> None:
    """The messages of `history_messages(count)` appended through the store, as turns would have stored them."""
    counter = TokenCounter("mock-model")
    rows = [
        NewMessage("user" if m["role"] == "user" else "assistant", m["content"], token_count=counter.count_message(m))
        for m in history_messages(count)
    ]
    for start in range(0, len(rows), 1000):
        await store.append(session_id, rows[start : start + 1000])


async def sessions_with_history(
    store: SessionStore, user_id: str, count: int, size: int, max_live: int
) -> list[uuid.UUID]:
    """`count` sessions of `size` messages each, as the service keeps a conversation that long: over `max_live`
    messages, all but `live_count(size, max_live)` are covered by a rolling summary, as the background compaction
    leaves them. Their session and messages are already in the Redis cache (a conversation that is going on)."""
    sessions = await create_sessions(store, user_id, count)
    counter = TokenCounter("mock-model")

    async def fill(session_id: uuid.UUID) -> None:
        await insert_history(store, session_id, size)
        through = size - live_count(size, max_live)
        if through:
            summary_tokens = counter.count_text(SUMMARY)
            committed = await store.commit_summary(
                session_id, expected_through=0, through=through, summary=SUMMARY, summary_tokens=summary_tokens
            )
            assert committed is not None
        await store.messages(session_id)
        await store.get_any(session_id)

    for start in range(0, count, 4):
        await asyncio.gather(*(fill(sid) for sid in sessions[start : start + 4]))
    return sessions


async def publish_finished_turn(redis: Redis, user_id: str, chunks: int) -> str:
    """A finished turn of `chunks` text deltas in the turn registry (for the replay measurement)."""
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    turn_id = str(uuid.uuid4())
    await registry.create(turn_id, str(uuid.uuid4()), user_id, lease=False)
    payload = protocol.to_json(protocol.TextDelta(id="t", delta="word "))
    for start in range(0, chunks, 1000):
        await registry.publish(turn_id, [payload] * min(1000, chunks - start))
    await registry.finish(turn_id, "completed")
    return turn_id


# --- counters ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisCounters:
    commands: int
    reads: int
    per_command: dict[str, int] = field(default_factory=dict)
    bytes_out: int = 0
    """Bytes Redis sent to its clients: what the service read (a history's LRANGE included)."""
    background_reads: float = 0.0
    """Of `reads`, what Redis would have served over the same time with nothing running (see `_storage_turns`)."""

    def minus(self, before: RedisCounters) -> RedisCounters:
        names = set(self.per_command) | set(before.per_command)
        per = {n: self.per_command.get(n, 0) - before.per_command.get(n, 0) for n in names}
        return RedisCounters(
            self.commands - before.commands,
            self.reads - before.reads,
            {n: c for n, c in per.items() if c},
            self.bytes_out - before.bytes_out,
        )


async def redis_counters(redis: Redis) -> RedisCounters:
    stats = await redis.info("stats")
    commandstats = await redis.info("commandstats")
    per = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in commandstats.items()}
    return RedisCounters(
        int(stats["total_commands_processed"]),
        int(stats.get("total_reads_processed", 0)),
        per,
        int(stats.get("total_net_output_bytes", 0)),
    )


async def redis_server_pid(redis: Redis) -> int:
    return int((await redis.info("server"))["process_id"])


@dataclass(frozen=True, slots=True)
class PgCounters:
    """Counters of one database: transactions, row operations and scans, and statements when
    `pg_stat_statements` is loaded."""

    xact_commit: int
    xact_rollback: int
    rows_inserted: int
    rows_updated: int
    rows_returned: int
    scans: int
    """Sequential plus index scans started on the service's tables."""
    statements: dict[str, int] | None
    """Calls per normalised statement (pg_stat_statements), None when it is not available."""

    def minus(self, before: PgCounters) -> PgCounters:
        statements = None
        if self.statements is not None and before.statements is not None:
            statements = {
                q: n - before.statements.get(q, 0)
                for q, n in self.statements.items()
                if n - before.statements.get(q, 0)
            }
        return PgCounters(
            self.xact_commit - before.xact_commit,
            self.xact_rollback - before.xact_rollback,
            self.rows_inserted - before.rows_inserted,
            self.rows_updated - before.rows_updated,
            self.rows_returned - before.rows_returned,
            self.scans - before.scans,
            statements,
        )


async def enable_pg_stat_statements(admin_dsn: str, dsn: str) -> str | None:
    """Try to turn pg_stat_statements on for the benchmark's database; None if it works, else why not."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        await conn.fetchval("SELECT count(*) FROM pg_stat_statements")
        return None
    except asyncpg.PostgresError as e:
        admin = await asyncpg.connect(admin_dsn)
        try:
            preload = await admin.fetchval("SHOW shared_preload_libraries")
        finally:
            await admin.close()
        return f"{e} (shared_preload_libraries = {preload!r}; loading it needs a server restart)"
    finally:
        await conn.close()


async def pg_counters(admin_dsn: str, database: str, *, statements: bool) -> PgCounters:
    """Counters of `database`. The table counters need a connection to it; that connection has closed (and its
    own transaction has been counted) before the database counters are read, so each reading includes itself and
    a difference of two readings counts neither."""
    conn = await asyncpg.connect(with_database(admin_dsn, database))
    try:
        scans = await conn.fetchval(
            "SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0) FROM pg_stat_user_tables "
            "WHERE relname IN ('chat_sessions', 'chat_messages')"
        )
        per: dict[str, int] | None = None
        if statements:
            rows = await conn.fetch(
                "SELECT query, calls FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database "
                "WHERE datname = current_database()) AND query NOT ILIKE '%pg_stat%'"
            )
            per = {r["query"]: int(r["calls"]) for r in rows}
    finally:
        await conn.close()
    await asyncio.sleep(0.5)  # a backend reports its counters as it exits
    admin = await asyncpg.connect(admin_dsn)
    try:
        db = await admin.fetchrow(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_returned "
            "FROM pg_stat_database WHERE datname = $1",
            database,
        )
    finally:
        await admin.close()
    assert db is not None
    return PgCounters(
        int(db["xact_commit"]),
        int(db["xact_rollback"]),
        int(db["tup_inserted"]),
        int(db["tup_updated"]),
        int(db["tup_returned"]),
        int(scans),
        per,
    )


async def pg_data_directory(admin_dsn: str) -> str:
    conn = await asyncpg.connect(admin_dsn)
    try:
        value: str = await conn.fetchval("SHOW data_directory")
        return value
    finally:
        await conn.close()
