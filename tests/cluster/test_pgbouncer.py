"""PostgreSQL behind PgBouncer in transaction pooling mode: each transaction may run on another server connection,
so nothing may rely on session state (asyncpg's named prepared statements, a session-level advisory lock)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from backend.store.migrate import load_migrations, upgrade_dsn
from backend.store.models import NewMessage
from backend.store.postgres import ChatRepository, create_pool
from tests.cluster.client import ClusterClient
from tests.cluster.test_turns import wait_until_free
from tests.cluster.topology import Topology
from tests.conftest import ADMIN_DSN

_LOCK_KEY = 0x636F_7069_6C6F  # backend.store.migrate's


async def _workload(pool: asyncpg.Pool) -> None:
    """What pods do all day, from many connections at once: the same few statements again and again."""
    repository = ChatRepository(pool)

    async def one_user(i: int) -> None:
        session = await repository.create_session(f"bouncer-{i}")
        for n in range(5):
            await repository.append_messages(session.id, [NewMessage(role="user", content=f"m{n}")])
            await repository.get_messages(session.id)
            await repository.get_session(session.id)

    await asyncio.gather(*(one_user(i) for i in range(10)))


async def test_the_service_pool_works_through_pgbouncer_with_the_statement_cache_off(cluster: Topology) -> None:
    pool = await create_pool(cluster.database_url, min_size=2, max_size=10, statement_cache_size=0)
    try:
        await _workload(pool)
    finally:
        await pool.close()


async def test_the_default_statement_cache_breaks_behind_pgbouncer(cluster: Topology) -> None:
    # Why `COPILOT_DB_STATEMENT_CACHE_SIZE=0` exists: asyncpg names its cached statements, PgBouncer hands the next
    # transaction another server connection, where the name is unknown or taken by another client's statement.
    pool = await create_pool(cluster.database_url, min_size=2, max_size=10)
    try:
        with pytest.raises(
            (asyncpg.exceptions.DuplicatePreparedStatementError, asyncpg.exceptions.InvalidSQLStatementNameError)
        ):
            await _workload(pool)
    finally:
        await pool.close()


@pytest.fixture
async def fresh_database(cluster: Topology) -> AsyncIterator[str]:
    """An empty database of its own, named like the topology's (the same PgBouncer serves it)."""
    name = f"{cluster.database}_m{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_pods_migrating_through_pgbouncer_apply_each_migration_once_and_leave_no_lock_held(
    cluster: Topology, fresh_database: str
) -> None:
    bouncer = cluster.database_url.rsplit("/", 1)[0] + f"/{fresh_database}"
    stop = asyncio.Event()

    async def other_clients() -> None:
        # Other clients share PgBouncer's server connections meanwhile, so consecutive statements of one client
        # land on different ones (as they do when pods start under load).
        conns = [await asyncpg.connect(bouncer, statement_cache_size=0) for _ in range(4)]
        try:
            while not stop.is_set():
                await asyncio.gather(*(c.execute("SELECT pg_sleep(0.002)") for c in conns))
        finally:
            for c in conns:
                await c.close()

    noise = asyncio.create_task(other_clients())
    try:
        for _ in range(3):  # three rounds of three pods starting at once (the later rounds find nothing to do)
            async with asyncio.timeout(30):  # a lock left held would make a later pod wait forever
                results = await asyncio.gather(*(upgrade_dsn(bouncer, statement_cache_size=0) for _ in range(3)))
            assert sorted(m.version for r in results for m in r) in ([], [m.version for m in load_migrations()])
            direct = await asyncpg.connect(ADMIN_DSN.rsplit("/", 1)[0] + f"/{fresh_database}")
            try:
                held = await direct.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                    "((classid::bigint << 32) | objid::bigint) = $1",
                    _LOCK_KEY,
                )
            finally:
                await direct.close()
            assert held == 0, "the migrations' advisory lock is still held by a pooled server connection"
    finally:
        stop.set()
        await noise


async def test_three_pods_with_pools_larger_than_pgbouncers_share_its_server_connections(
    cluster: Topology, db: asyncpg.Connection
) -> None:
    # 3 pods x COPILOT_DB_POOL_MAX_SIZE=10 clients, PgBouncer's default_pool_size=20 server connections: 30 turns at
    # once all complete, and PostgreSQL never sees more than PgBouncer's pool.
    peak = 0
    stop = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            count = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                cluster.database,
            )
            peak = max(peak, int(count))
            await asyncio.sleep(0.05)

    async def one_turn(i: int) -> int:
        async with ClusterClient(cluster, user=f"pool-{uuid.uuid4().hex[:6]}-{i}") as client:
            sid = await client.new_session()
            stream = await client.turn(sid, "[[mock:text tokens=30 delay_ms=10]]")
            await wait_until_free(client, sid)
            return stream.response.status_code

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    try:
        statuses = await asyncio.gather(*(one_turn(i) for i in range(30)))
    finally:
        stop.set()
        await watcher
    assert statuses == [200] * 30, statuses
    print(f"30 turns through 3 pods in {time.monotonic() - started:.1f}s; PostgreSQL saw at most {peak} connections")
    assert 0 < peak <= 20
