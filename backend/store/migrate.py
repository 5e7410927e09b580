"""Ordered SQL migrations (`sql/NNNN_name.sql`), applied once each under a Postgres advisory lock.

N pods starting at once all call `upgrade`; the advisory lock (a transaction's, so it works behind PgBouncer too)
makes one of them apply each pending file while the others wait, then find it done. Each file runs in its own
transaction together with its bookkeeping row, so a failed migration leaves no trace. A file edited after it was
applied is reported instead of silently skipped.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger("copilot.migrate")

# Any constant works; it only has to be the same in every pod and unlikely to collide with an application lock.
_LOCK_KEY = 0x636F_7069_6C6F  # "copilo"

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS copilot_schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """The database's migration history does not match the files shipped with this version."""


def load_migrations() -> list[Migration]:
    """The migrations shipped in the package, in order."""
    found = []
    for entry in resources.files("backend.store").joinpath("sql").iterdir():
        if not entry.name.endswith(".sql"):
            continue
        number, _, rest = entry.name.partition("_")
        found.append(Migration(int(number), rest.removesuffix(".sql"), entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration numbers: {versions}")
    return found


async def upgrade(conn: asyncpg.Connection) -> list[Migration]:
    """Apply every pending migration; return the ones this call applied (empty when up to date).

    The advisory lock is a transaction's (`pg_advisory_xact_lock`), taken by each migration's own transaction, which
    checks again that no other pod applied it meanwhile. A session-level lock and unlock would be two transactions:
    behind PgBouncer in transaction pooling mode they may reach two different server connections, the unlock fails,
    and the lock stays held by a pooled server connection, where the next pod to start waits for it forever."""
    migrations = load_migrations()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_BOOKKEEPING)
        applied = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM copilot_schema_migrations")
        }
    for m in migrations:
        if m.version in applied and applied[m.version] != m.checksum:
            raise MigrationError(f"migration {m.version}_{m.name} changed after it was applied")
    done = []
    for m in migrations:
        if m.version in applied:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            if await conn.fetchval("SELECT 1 FROM copilot_schema_migrations WHERE version = $1", m.version):
                continue  # another pod applied it since we looked
            await conn.execute(m.sql)
            await conn.execute(
                "INSERT INTO copilot_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                m.version,
                m.name,
                m.checksum,
            )
        log.info("applied migration %04d_%s", m.version, m.name)
        done.append(m)
    unknown = set(applied) - {m.version for m in migrations}
    if unknown:
        log.warning("database has migrations this version does not know: %s", sorted(unknown))
    return done


async def upgrade_dsn(dsn: str, *, statement_cache_size: int = 100) -> list[Migration]:
    """`upgrade` on a connection of its own (used by `copilot db upgrade` and at startup); `statement_cache_size=0`
    behind a transaction-pooling PgBouncer (`Settings.db_statement_cache_size`)."""
    conn = await asyncpg.connect(dsn, statement_cache_size=statement_cache_size)
    try:
        return await upgrade(conn)
    finally:
        await conn.close()
