import asyncio
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from backend.store.migrate import MigrationError, load_migrations, upgrade, upgrade_dsn
from tests.conftest import ADMIN_DSN, _dsn_for


@pytest.fixture
async def empty_database() -> AsyncIterator[str]:
    name = f"copilot_migrate_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield _dsn_for(name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_migrates_from_empty_then_repeat_is_a_no_op(empty_database: str) -> None:
    applied = await upgrade_dsn(empty_database)
    assert [m.version for m in applied] == [m.version for m in load_migrations()]
    assert await upgrade_dsn(empty_database) == []
    conn = await asyncpg.connect(empty_database)
    tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname='public'")}
    await conn.close()
    assert {"chat_sessions", "chat_messages", "copilot_schema_migrations"} <= tables


async def test_pods_starting_together_apply_each_migration_once(empty_database: str) -> None:
    results = await asyncio.gather(*(upgrade_dsn(empty_database) for _ in range(6)))
    # Each migration takes the lock in its own transaction, so the files may be shared out between the pods.
    applied = sorted(m.version for r in results for m in r)
    assert applied == [m.version for m in load_migrations()]


async def test_a_migration_edited_after_it_ran_is_reported(empty_database: str) -> None:
    await upgrade_dsn(empty_database)
    conn = await asyncpg.connect(empty_database)
    try:
        await conn.execute("UPDATE copilot_schema_migrations SET checksum = 'tampered' WHERE version = 1")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await upgrade(conn)
    finally:
        await conn.close()
