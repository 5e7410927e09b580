"""schema.prisma declares exactly the schema the SQL migrations create.

A fresh database is migrated, read back from pg_catalog into the same description `prisma_schema.parse` builds, and
the two are compared. `diff` lists every disagreement, so one failing assertion shows all of them.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

from backend.store.migrate import upgrade_dsn
from tests.conftest import ADMIN_DSN, _dsn_for
from tests.store.prisma_schema import Column, ForeignKey, Index, Schema, Table, parse

SCHEMA_PRISMA = Path(__file__).resolve().parents[2] / "schema.prisma"
BOOKKEEPING_TABLE = "copilot_schema_migrations"

# --- Reading the database ---------------------------------------------------------------------------------------

_TABLES = """
SELECT relname FROM pg_class
WHERE relnamespace = current_schema()::regnamespace AND relkind IN ('r', 'p') AND NOT relispartition
  AND relname <> $1
"""

_COLUMNS = """
SELECT c.relname AS table, a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type,
       NOT a.attnotnull AS nullable,
       a.attidentity <> '' OR (d.adbin IS NOT NULL AND a.attgenerated = '') AS has_default,
       pg_get_expr(d.adbin, d.adrelid) AS default
FROM pg_class c
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p') AND c.relname <> $1
ORDER BY c.relname, a.attnum
"""

_INDEXES = """
SELECT t.relname AS table, i.relname AS name, x.indisprimary AS primary, x.indisunique AS unique,
       am.amname AS method, pg_get_expr(x.indpred, x.indrelid) AS predicate, x.indoption::int2[] AS options,
       ARRAY(SELECT pg_get_indexdef(x.indexrelid, k, true) FROM generate_series(1, x.indnkeyatts) k ORDER BY k)
           AS columns
FROM pg_index x
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_am am ON am.oid = i.relam
WHERE t.relnamespace = current_schema()::regnamespace AND t.relname <> $1
ORDER BY t.relname, i.relname
"""

_FOREIGN_KEYS = """
SELECT t.relname AS table, con.conname AS name, r.relname AS ref_table,
       con.confdeltype::text AS on_delete, con.confupdtype::text AS on_update,
       ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o) AS columns,
       ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY k(n, o)
             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) AS ref_columns
FROM pg_constraint con
JOIN pg_class t ON t.oid = con.conrelid
JOIN pg_class r ON r.oid = con.confrelid
WHERE con.contype = 'f' AND t.relnamespace = current_schema()::regnamespace AND t.relname <> $1
ORDER BY t.relname, con.conname
"""

_ENUMS = """
SELECT t.typname AS name, array_agg(e.enumlabel ORDER BY e.enumsortorder) AS labels
FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
WHERE t.typnamespace = current_schema()::regnamespace
GROUP BY t.typname
"""

_ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
_QUOTED = re.compile(r'"((?:[^"]|"")*)"')
_CAST = re.compile(r'::(?:"[^"]+"|[a-z][a-z0-9_ ]*)(?:\(\d+(?:,\d+)?\))?(?:\[\])*$')


def _unquote_identifiers(text: str) -> str:
    return _QUOTED.sub(lambda m: m.group(1).replace('""', '"'), text)


def _column_type(formatted: str) -> str:
    # `timestamptz` without a precision is `timestamptz(6)`; Prisma always spells the precision out.
    return re.sub(r"^(timestamp|time) (with|without) time zone", r"\1(6) \2 time zone", _unquote_identifiers(formatted))


def _default_value(expression: str | None) -> str | None:
    """`'{}'::jsonb` -> `{}`, `CURRENT_TIMESTAMP` -> `now()`: the value as Prisma's @default would write it."""
    if expression is None:
        return None
    while m := _CAST.search(expression):
        expression = expression[: m.start()]
    if len(expression) >= 2 and expression[0] == expression[-1] == "'":
        expression = expression[1:-1].replace("''", "'")
    return "now()" if expression.upper() == "CURRENT_TIMESTAMP" else expression


def _index_columns(columns: Sequence[str], options: Sequence[int]) -> tuple[str, ...]:
    described = []
    for column, option in zip(columns, options, strict=True):
        desc, nulls_first = bool(option & 1), bool(option & 2)
        suffix = " DESC" if desc else ""
        if nulls_first != desc:  # Postgres' default is NULLS LAST ascending, NULLS FIRST descending
            suffix += " NULLS FIRST" if nulls_first else " NULLS LAST"
        described.append(_unquote_identifiers(column) + suffix)
    return tuple(described)


async def introspect(conn: asyncpg.Connection) -> Schema:
    """The tables (but the migrations' bookkeeping table), indexes, foreign keys and enums of the current schema."""
    schema = Schema()
    for row in await conn.fetch(_TABLES, BOOKKEEPING_TABLE):
        schema.tables[row["relname"]] = Table()
    for row in await conn.fetch(_COLUMNS, BOOKKEEPING_TABLE):
        schema.tables[row["table"]].columns[row["column"]] = Column(
            _column_type(row["type"]), row["nullable"], row["has_default"], _default_value(row["default"])
        )
    for row in await conn.fetch(_INDEXES, BOOKKEEPING_TABLE):
        index = Index(
            _index_columns(row["columns"], row["options"]),
            row["unique"],
            row["name"],
            row["method"],
            row["predicate"],
        )
        table = schema.tables[row["table"]]
        if row["primary"]:
            table.primary_key = index
        else:
            table.indexes.append(index)
    for row in await conn.fetch(_FOREIGN_KEYS, BOOKKEEPING_TABLE):
        schema.tables[row["table"]].foreign_keys.append(
            ForeignKey(
                tuple(row["columns"]),
                row["ref_table"],
                tuple(row["ref_columns"]),
                _ACTIONS[row["on_delete"]],
                _ACTIONS[row["on_update"]],
                row["name"],
            )
        )
    for row in await conn.fetch(_ENUMS):
        schema.enums[row["name"]] = tuple(row["labels"])
    return schema


# --- Comparing ----------------------------------------------------------------------------------------------------


def diff(declared: Schema, actual: Schema) -> list[str]:
    """Every way `actual` (the database) differs from `declared` (schema.prisma), one readable line each."""
    found = []
    for name in sorted(declared.enums.keys() | actual.enums.keys()):
        values, labels = declared.enums.get(name), actual.enums.get(name)
        if labels is None:
            found.append(f"enum {name}: declared in prisma, missing from database")
        elif values is None:
            found.append(f"enum {name}: in database, not declared in prisma")
        elif values != labels:
            found.append(f"enum {name}: prisma values {list(values)}, database {list(labels)}")
    for name in sorted(declared.tables.keys() | actual.tables.keys()):
        if name not in actual.tables:
            found.append(f"table {name}: declared in prisma, missing from database")
        elif name not in declared.tables:
            found.append(f"table {name}: in database, not declared in prisma")
        else:
            found += _diff_table(name, declared.tables[name], actual.tables[name])
    return found


def _diff_table(name: str, declared: Table, actual: Table) -> list[str]:
    found = []
    for column in sorted(declared.columns.keys() | actual.columns.keys()):
        where, d, a = f"{name}.{column}", declared.columns.get(column), actual.columns.get(column)
        if a is None:
            found.append(f"{where}: declared in prisma, missing from database")
        elif d is None:
            found.append(f"{where}: in database, not declared in prisma")
        else:
            found += [f"{where}: {problem}" for problem in _diff_column(d, a)]

    d_pk, a_pk = declared.primary_key, actual.primary_key
    if (d_pk and d_pk.columns) != (a_pk and a_pk.columns) or (d_pk and d_pk.name and a_pk and d_pk.name != a_pk.name):
        found.append(f"{name}: prisma primary key {_describe_key(d_pk)}, database {_describe_key(a_pk)}")

    found += _diff_objects(name, declared.indexes, actual.indexes, lambda i: (i.unique, i.columns), _describe_index)
    found += _diff_objects(name, declared.foreign_keys, actual.foreign_keys, lambda f: f.columns, _describe_fk)
    return found


def _diff_column(declared: Column, actual: Column) -> list[str]:
    found = []
    if declared.type != actual.type:
        found.append(f"prisma type {declared.type}, database {actual.type}")
    if declared.nullable is not None and declared.nullable != actual.nullable:
        found.append(
            "prisma nullable, database NOT NULL" if declared.nullable else "prisma required, database nullable"
        )
    if declared.has_default is not None and declared.has_default != actual.has_default:
        found.append(
            "prisma @default, database has no default"
            if declared.has_default
            else f"no @default in prisma, database DEFAULT {actual.default}"
        )
    elif (
        declared.default is not None
        and actual.default is not None
        and not _same_value(declared.default, actual.default)
    ):
        found.append(f"prisma @default {declared.default!r}, database DEFAULT {actual.default!r}")
    return found


def _same_value(a: str, b: str) -> bool:
    """Equal as numbers (`0` and `0.0`), as JSON (`{}` and `{ }`), or else as text."""
    for read in (Decimal, json.loads):
        try:
            return bool(read(a) == read(b))
        except (ArithmeticError, ValueError):
            continue
    return a == b


_T = TypeVar("_T", Index, ForeignKey)


def _diff_objects(
    table: str, declared: list[_T], actual: list[_T], key: Callable[[_T], object], describe: Callable[[_T], str]
) -> list[str]:
    """Pair indexes (or foreign keys) by the name the schema pins, else by `key`, and report what does not match."""
    found, remaining = [], list(actual)
    for d in sorted(declared, key=lambda d: d.name is None):
        a = next((a for a in remaining if d.name is not None and a.name == d.name), None)
        a = a or next((a for a in remaining if key(a) == key(d)), None)
        if a is None:
            found.append(f"{table}: prisma {describe(d)} missing from database")
            continue
        remaining.remove(a)
        if not _matches(d, a):
            found.append(f"{table}: prisma {describe(d)}, database {describe(a)}")
    found += [f"{table}: database {describe(a)} not declared in prisma" for a in remaining]
    return found


def _matches(declared: _T, actual: _T) -> bool:
    """Equal, except where the schema leaves something open: a name without `map:`, a missing `onUpdate`."""
    if declared.name is None:
        actual = replace(actual, name=None)
    if isinstance(declared, ForeignKey) and isinstance(actual, ForeignKey) and declared.on_update is None:
        actual = replace(actual, on_update=None)
    return declared == actual


def _describe_key(key: Index | None) -> str:
    if key is None:
        return "none"
    return f"{key.name + ' ' if key.name else ''}({', '.join(key.columns)})"


def _describe_index(index: Index) -> str:
    kind = ("unique " if index.unique else "") + ("index" if index.method == "btree" else f"{index.method} index")
    where = f" WHERE {index.predicate}" if index.predicate else ""
    return f"{kind}{f' {index.name}' if index.name else ''} ({', '.join(index.columns)}){where}"


def _describe_fk(fk: ForeignKey) -> str:
    on_update = f" ON UPDATE {fk.on_update}" if fk.on_update else ""
    return (
        f"foreign key{f' {fk.name}' if fk.name else ''} ({', '.join(fk.columns)})"
        f" -> {fk.ref_table} ({', '.join(fk.ref_columns)}) ON DELETE {fk.on_delete}{on_update}"
    )


# --- Tests --------------------------------------------------------------------------------------------------------


@pytest.fixture
async def fresh_database() -> AsyncIterator[str]:
    """The DSN of a new, empty database of this test's own; dropped afterwards."""
    name = f"copilot_prisma_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _dsn_for(name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def migrated(fresh_database: str) -> AsyncIterator[asyncpg.Connection]:
    await upgrade_dsn(fresh_database)
    conn = await asyncpg.connect(fresh_database)
    yield conn
    await conn.close()


async def test_schema_prisma_declares_what_the_migrations_create(migrated: asyncpg.Connection) -> None:
    differences = diff(parse(SCHEMA_PRISMA.read_text(encoding="utf-8")), await introspect(migrated))
    assert not differences, "schema.prisma and backend/store/sql disagree:\n" + "\n".join(differences)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        pytest.param(
            "ALTER TABLE chat_messages ADD COLUMN extra text",
            ["chat_messages.extra: in database, not declared in prisma"],
            id="extra-column",
        ),
        pytest.param(
            "ALTER TABLE chat_messages ALTER COLUMN refusal SET NOT NULL",
            ["chat_messages.refusal: prisma nullable, database NOT NULL"],
            id="nullability",
        ),
        pytest.param(
            "DROP INDEX chat_sessions_user_recent_idx",
            [
                "chat_sessions: prisma index chat_sessions_user_recent_idx (user_id, updated_at DESC, id DESC)"
                " missing from database"
            ],
            id="dropped-index",
        ),
        pytest.param(
            "DROP INDEX chat_sessions_user_recent_idx;"
            "CREATE INDEX chat_sessions_user_recent_idx ON chat_sessions (user_id, updated_at, id DESC)",
            [
                "chat_sessions: prisma index chat_sessions_user_recent_idx (user_id, updated_at DESC, id DESC),"
                " database index chat_sessions_user_recent_idx (user_id, updated_at, id DESC)"
            ],
            id="index-order",
        ),
        pytest.param(
            "ALTER TABLE chat_sessions ALTER COLUMN title TYPE varchar(200)",
            ["chat_sessions.title: prisma type text, database character varying(200)"],
            id="type",
        ),
        pytest.param(
            "ALTER TABLE chat_messages ALTER COLUMN token_count DROP DEFAULT",
            ["chat_messages.token_count: prisma @default, database has no default"],
            id="dropped-default",
        ),
        pytest.param(
            "ALTER TABLE chat_sessions ALTER COLUMN message_count SET DEFAULT 1",
            ["chat_sessions.message_count: prisma @default '0', database DEFAULT '1'"],
            id="default-value",
        ),
        pytest.param(
            "ALTER TABLE chat_messages ALTER COLUMN name SET DEFAULT 'x'",
            ["chat_messages.name: no @default in prisma, database DEFAULT x"],
            id="undeclared-default",
        ),
        pytest.param(
            "ALTER TABLE chat_messages RENAME CONSTRAINT chat_messages_session_sequence_key TO renamed_key",
            [
                "chat_messages: prisma unique index chat_messages_session_sequence_key (session_id, sequence),"
                " database unique index renamed_key (session_id, sequence)"
            ],
            id="unique-name",
        ),
        pytest.param(
            "ALTER TABLE chat_messages DROP CONSTRAINT chat_messages_session_id_fkey,"
            " ADD FOREIGN KEY (session_id) REFERENCES chat_sessions (id) ON DELETE RESTRICT",
            [
                "chat_messages: prisma foreign key (session_id) -> chat_sessions (id) ON DELETE CASCADE,"
                " database foreign key chat_messages_session_id_fkey (session_id) -> chat_sessions (id)"
                " ON DELETE RESTRICT ON UPDATE NO ACTION"
            ],
            id="on-delete",
        ),
        pytest.param(
            "DROP INDEX chat_operations_open_deadline_idx;"
            "CREATE INDEX chat_operations_open_deadline_idx ON chat_operations (deadline)",
            [
                "chat_operations: prisma index chat_operations_open_deadline_idx (deadline) WHERE (settled_at IS NULL),"
                " database index chat_operations_open_deadline_idx (deadline)"
            ],
            id="partial-index-predicate",
        ),
        pytest.param(
            "CREATE TABLE stray (id integer PRIMARY KEY)",
            ["table stray: in database, not declared in prisma"],
            id="extra-table",
        ),
    ],
)
async def test_diff_reports_drift(migrated: asyncpg.Connection, sql: str, expected: list[str]) -> None:
    declared = parse(SCHEMA_PRISMA.read_text(encoding="utf-8"))
    before = diff(declared, await introspect(migrated))
    await migrated.execute(sql)
    after = diff(declared, await introspect(migrated))
    # Relative to the unaltered database, so a disagreement already present cannot hide or fake this one.
    assert [d for d in after if d not in before] == expected


# Syntax the app's schema does not use yet, so the reader is known to handle it before a migration needs it.
PROBE_PRISMA = r"""
// A comment with a { brace
enum Mood {
  HAPPY
  SAD   @map("sad") // a mapped value
  @@map("mood")
}

model Account {
  id          Int          @id @default(autoincrement())
  email       String       @unique(map: "account_email_key") @db.VarChar(320)
  handle      String       @unique
  balance     Decimal      @default(0.50) @db.Decimal(10, 2)
  active      Boolean      @default(false)
  note        String       @default("a // not a comment, \"quoted\"")
  ratio       Float?
  avatar      Bytes?
  tags        String[]     @default([])
  mood        Mood         @default(SAD)
  seenAt      DateTime     @default(now()) @map("seen_at")
  token       String       @default(uuid()) @db.Uuid
  memberships Membership[]

  @@index([mood], type: Hash)
  @@map("accounts")
}

model Membership {
  groupId   String   @default(dbgenerated("gen_random_uuid()")) @map("group_id") @db.Uuid
  position  Int      @db.SmallInt
  accountId Int?     @map("account_id")
  account   Account? @relation(fields: [accountId], references: [id], onUpdate: Cascade, map: "membership_account_fk")

  @@id([groupId, position], map: "membership_pk")
  @@index([accountId(sort: Desc)])
  @@map("memberships")
}
"""

PROBE_SQL = """
CREATE TYPE mood AS ENUM ('HAPPY', 'sad');
CREATE TABLE accounts (
    id      serial PRIMARY KEY,
    email   varchar(320) NOT NULL CONSTRAINT account_email_key UNIQUE,
    handle  text NOT NULL UNIQUE,
    balance numeric(10, 2) NOT NULL DEFAULT 0.5,
    active  boolean NOT NULL DEFAULT false,
    note    text NOT NULL DEFAULT 'a // not a comment, "quoted"',
    ratio   double precision,
    avatar  bytea,
    tags    text[] NOT NULL DEFAULT '{}',
    mood    mood NOT NULL DEFAULT 'sad',
    seen_at timestamp(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    token   uuid NOT NULL
);
CREATE INDEX accounts_mood_idx ON accounts USING hash (mood);
CREATE TABLE memberships (
    group_id   uuid NOT NULL DEFAULT gen_random_uuid(),
    position   smallint NOT NULL,
    account_id integer CONSTRAINT membership_account_fk REFERENCES accounts (id) ON DELETE SET NULL ON UPDATE CASCADE,
    CONSTRAINT membership_pk PRIMARY KEY (group_id, position)
);
CREATE INDEX ON memberships (account_id DESC);
"""


async def test_reader_handles_syntax_the_schema_does_not_use_yet(fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        await conn.execute(PROBE_SQL)
        assert diff(parse(PROBE_PRISMA), await introspect(conn)) == []
    finally:
        await conn.close()
