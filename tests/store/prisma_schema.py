"""Reads `schema.prisma` into the tables, columns, indexes and foreign keys Prisma would create on PostgreSQL.

The same plain description is built from a live database by `test_schema_prisma.introspect`, so the two can be
compared field by field. Types are spelled the way Postgres' `format_type()` prints them.

Not handled (it fails loudly or shows up as a difference rather than being guessed at): implicit many-to-many join
tables, `@@schema`, views and composite types (skipped), and `relationMode = "prisma"`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

# --- The description both sides are turned into ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Column:
    type: str
    """As `format_type()` prints it, with the implicit precision of timestamps spelled out: `timestamp(6) ...`."""
    nullable: bool | None
    """None when either is acceptable: Prisma lists cannot be optional, yet `prisma migrate` leaves them nullable."""
    has_default: bool | None
    """None when either is acceptable: an `@id` without `@default`, or a default Prisma computes client-side."""
    default: str | None = None
    """The default's value where it can be compared (literals, `now()`); None compares presence only."""


@dataclass(frozen=True, slots=True)
class Index:
    columns: tuple[str, ...]
    """Column names, with ` DESC` (and a non-default ` NULLS FIRST/LAST`) appended where it applies."""
    unique: bool
    name: str | None = None
    """None when the schema does not pin the name (no `map:`)."""
    method: str = "btree"
    predicate: str | None = None
    """The WHERE clause of a partial index (Prisma's `partialIndexes` preview: `where: raw("...")`)."""


@dataclass(frozen=True, slots=True)
class ForeignKey:
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    on_delete: str
    """`CASCADE`, `RESTRICT`, `NO ACTION`, `SET NULL` or `SET DEFAULT`."""
    on_update: str | None = None
    """None when not compared: the schema leaves `onUpdate` out."""
    name: str | None = None


@dataclass(slots=True)
class Table:
    columns: dict[str, Column] = field(default_factory=dict)
    primary_key: Index | None = None
    indexes: list[Index] = field(default_factory=list)
    """Unique and plain indexes, except the primary key's."""
    foreign_keys: list[ForeignKey] = field(default_factory=list)


@dataclass(slots=True)
class Schema:
    tables: dict[str, Table] = field(default_factory=dict)
    enums: dict[str, tuple[str, ...]] = field(default_factory=dict)


# --- Prisma's PostgreSQL type mapping ---------------------------------------------------------------------------

_SCALARS = {
    "String": "text",
    "Boolean": "boolean",
    "Int": "integer",
    "BigInt": "bigint",
    "Float": "double precision",
    "Decimal": "numeric(65,30)",
    "DateTime": "timestamp(3) without time zone",
    "Json": "jsonb",
    "Bytes": "bytea",
}

# `{}` is where the native type's arguments go; a value in _NATIVE_DEFAULT_ARGS fills it when there are none.
_NATIVE = {
    "Text": "text",
    "VarChar": "character varying{}",
    "Char": "character{}",
    "Uuid": "uuid",
    "Xml": "xml",
    "Inet": "inet",
    "Citext": "citext",
    "Bit": "bit{}",
    "VarBit": "bit varying{}",
    "SmallInt": "smallint",
    "Integer": "integer",
    "Oid": "oid",
    "BigInt": "bigint",
    "DoublePrecision": "double precision",
    "Real": "real",
    "Decimal": "numeric{}",
    "Money": "money",
    "Timestamp": "timestamp{} without time zone",
    "Timestamptz": "timestamp{} with time zone",
    "Time": "time{} without time zone",
    "Timetz": "time{} with time zone",
    "Date": "date",
    "Json": "json",
    "JsonB": "jsonb",
    "ByteA": "bytea",
    "Boolean": "boolean",
}
_NATIVE_DEFAULT_ARGS = {"Char": "1", "Bit": "1", "Timestamp": "6", "Timestamptz": "6", "Time": "6", "Timetz": "6"}

_REFERENTIAL_ACTIONS = {
    "Cascade": "CASCADE",
    "Restrict": "RESTRICT",
    "NoAction": "NO ACTION",
    "SetNull": "SET NULL",
    "SetDefault": "SET DEFAULT",
}

# Defaults Prisma fills in itself: the column gets no DEFAULT clause from `prisma migrate`.
_CLIENT_SIDE_DEFAULTS = ("uuid(", "cuid(", "nanoid(", "ulid(")

# --- Lexing -----------------------------------------------------------------------------------------------------

_BLOCK_START = re.compile(r"(model|enum|view|type|datasource|generator)\s+(\w+)\s*\{")
_FIELD = re.compile(r'(\w+)\s+(\w+(?:\("(?:[^"\\]|\\.)*"\))?)(\[\]|\?)?\s*(.*)')
_ATTRIBUTE = re.compile(r"@@?[\w.]+")


class PrismaSchemaError(ValueError):
    """schema.prisma uses something this reader does not understand."""


def _unquoted(text: str) -> Iterator[tuple[int, str]]:
    """(index, character) for every character outside string literals."""
    in_string = escaped = False
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        else:
            yield i, ch


def _strip_comment(line: str) -> str:
    for i, _ in _unquoted(line):
        if line.startswith("//", i):
            return line[:i]
    return line


def _closing(text: str, start: int) -> int:
    """Index of the bracket closing the one at `start`."""
    depth = 0
    for i, ch in _unquoted(text):
        if i < start:
            continue
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth == 0:
                return i
    raise PrismaSchemaError(f"unbalanced brackets in {text!r}")


def _split(text: str) -> list[str]:
    """Split on commas that are not inside brackets or strings."""
    parts, depth, start = [], 0, 0
    for i, ch in _unquoted(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def _attributes(text: str) -> list[tuple[str, str]]:
    """`@id @map("x") @db.VarChar(20)` -> [("@id", ""), ("@map", '"x"'), ("@db.VarChar", "20")]."""
    found, i = [], 0
    while i < len(text):
        m = _ATTRIBUTE.match(text, i)
        if not m:
            if not text[i].isspace():
                raise PrismaSchemaError(f"cannot read attributes {text!r}")
            i += 1
            continue
        i = m.end()
        if text.startswith("(", i):
            end = _closing(text, i)
            found.append((m.group(), text[i + 1 : end].strip()))
            i = end + 1
        else:
            found.append((m.group(), ""))
    return found


def _arguments(text: str) -> tuple[list[str], dict[str, str]]:
    positional, named = [], {}
    for part in _split(text):
        m = re.match(r"(\w+)\s*:\s*(.*)", part, re.DOTALL)
        if m:
            named[m.group(1)] = m.group(2).strip()
        else:
            positional.append(part)
    return positional, named


def _string(text: str) -> str:
    if not text.startswith('"'):
        raise PrismaSchemaError(f"expected a string, got {text!r}")
    value: str = json.loads(text)
    return value


def _field_list(text: str) -> list[tuple[str, bool]]:
    """`[a, b(sort: Desc)]` -> [("a", False), ("b", True)]: each name and whether it sorts descending."""
    if not (text.startswith("[") and text.endswith("]")):
        raise PrismaSchemaError(f"expected a field list, got {text!r}")
    items = []
    for item in _split(text[1:-1]):
        name, _, args = item.partition("(")
        sort = _arguments(args.rstrip(")"))[1].get("sort", "Asc") if args else "Asc"
        items.append((name.strip(), sort == "Desc"))
    return items


def _blocks(text: str) -> list[tuple[str, str, list[str]]]:
    """(kind, name, body lines without comments) for each top-level block."""
    blocks: list[tuple[str, str, list[str]]] = []
    body: list[str] | None = None
    for raw in text.splitlines():
        line = _strip_comment(raw).strip()
        if not line:
            continue
        if body is None:
            m = _BLOCK_START.fullmatch(line)
            if not m:
                raise PrismaSchemaError(f"unexpected line outside a block: {raw!r}")
            body = []
            blocks.append((m.group(1), m.group(2), body))
        elif line == "}":
            body = None
        else:
            body.append(line)
    return blocks


# --- Interpretation ---------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Field:
    name: str
    type: str
    modifier: str  # "", "?" or "[]"
    attributes: dict[str, str]


@dataclass(slots=True)
class _Model:
    table: str
    fields: list[_Field]
    block_attributes: list[tuple[str, str]]

    def column(self, field_name: str) -> str:
        for f in self.fields:
            if f.name == field_name:
                return _string(f.attributes["@map"]) if "@map" in f.attributes else f.name
        raise PrismaSchemaError(f"{self.table}: no field {field_name!r}")


def _read_model(name: str, lines: list[str]) -> _Model:
    fields, block_attributes, table = [], [], name
    for line in lines:
        if line.startswith("@@"):
            for attr, args in _attributes(line):
                if attr == "@@map":
                    table = _string(args)
                else:
                    block_attributes.append((attr, args))
            continue
        m = _FIELD.fullmatch(line)
        if not m:
            raise PrismaSchemaError(f"model {name}: cannot read field {line!r}")
        fields.append(_Field(m.group(1), m.group(2), m.group(3) or "", dict(_attributes(m.group(4)))))
    return _Model(table, fields, block_attributes)


def _column_type(f: _Field, enums: dict[str, tuple[str, dict[str, str]]]) -> str:
    natives = [(attr.removeprefix("@db."), args) for attr, args in f.attributes.items() if attr.startswith("@db.")]
    if natives:
        native, args = natives[0]
        if native not in _NATIVE:
            raise PrismaSchemaError(f"field {f.name}: unknown native type @db.{native}")
        args = args.replace(" ", "") or _NATIVE_DEFAULT_ARGS.get(native, "")
        base = _NATIVE[native].format(f"({args})" if args else "")
    elif f.type in _SCALARS:
        base = _SCALARS[f.type]
    elif f.type in enums:
        base = enums[f.type][0]
    elif f.type.startswith("Unsupported("):
        base = _string(f.type.removeprefix("Unsupported(").removesuffix(")"))
    else:
        raise PrismaSchemaError(f"field {f.name}: unknown type {f.type}")
    return base + "[]" if f.modifier == "[]" else base


def _default(args: str, enum_values: dict[str, str] | None) -> tuple[bool | None, str | None]:
    """(has_default, comparable value) for `@default(args)`."""
    if args.startswith(_CLIENT_SIDE_DEFAULTS):
        return None, None
    if args.startswith('"'):
        return True, _string(args)
    if args in ("now()", "true", "false") or re.fullmatch(r"-?\d+(\.\d+)?", args):
        return True, args
    if enum_values is not None and args in enum_values:
        return True, enum_values[args]
    return True, None  # autoincrement(), dbgenerated(...), sequence(), lists: presence only


def _index(model: _Model, args: str, *, unique: bool) -> Index:
    positional, named = _arguments(args)
    fields = _field_list(named.get("fields") or positional[0])
    return Index(
        columns=tuple(model.column(n) + (" DESC" if desc else "") for n, desc in fields),
        unique=unique,
        name=_string(named["map"]) if "map" in named else None,
        method=named.get("type", "BTree").lower(),
        predicate=_where(named["where"]) if "where" in named else None,
    )


def _where(text: str) -> str:
    """`raw("(x IS NOT NULL)")` (the `partialIndexes` preview) -> the predicate, as `pg_get_expr` prints it."""
    if not (text.startswith("raw(") and text.endswith(")")):
        raise PrismaSchemaError(f"only raw(...) index conditions are supported, got {text!r}")
    return _string(text[4:-1].strip())


def _field_index(column: str, args: str) -> Index:
    """The key declared by a field's `@id(...)` or `@unique(...)`."""
    named = _arguments(args)[1]
    return Index(
        columns=(column + (" DESC" if named.get("sort") == "Desc" else ""),),
        unique=True,
        name=_string(named["map"]) if "map" in named else None,
    )


def _foreign_key(model: _Model, f: _Field, models: dict[str, _Model]) -> ForeignKey | None:
    _, named = _arguments(f.attributes["@relation"])
    if "fields" not in named:
        return None  # the other side of the relation carries the foreign key
    target = models[f.type]
    on_delete = named.get("onDelete", "SetNull" if f.modifier == "?" else "Restrict")
    return ForeignKey(
        columns=tuple(model.column(n) for n, _ in _field_list(named["fields"])),
        ref_table=target.table,
        ref_columns=tuple(target.column(n) for n, _ in _field_list(named["references"])),
        on_delete=_REFERENTIAL_ACTIONS[on_delete],
        on_update=_REFERENTIAL_ACTIONS[named["onUpdate"]] if "onUpdate" in named else None,
        name=_string(named["map"]) if "map" in named else None,
    )


def _enum(name: str, lines: list[str]) -> tuple[str, dict[str, str]]:
    """The database type name and {Prisma value: database label} of an enum block."""
    db_name, values = name, {}
    for line in lines:
        if line.startswith("@@"):
            (attr, args), *_ = _attributes(line)
            if attr != "@@map":
                raise PrismaSchemaError(f"enum {name}: unsupported {attr}")
            db_name = _string(args)
        else:
            value, _, rest = line.partition(" ")
            attrs = dict(_attributes(rest))
            values[value] = _string(attrs["@map"]) if "@map" in attrs else value
    return db_name, values


def _table(model: _Model, models: dict[str, _Model], enums: dict[str, tuple[str, dict[str, str]]]) -> Table:
    table = Table()
    for f in model.fields:
        if f.type in models:
            fk = _foreign_key(model, f, models) if "@relation" in f.attributes else None
            if fk is not None:
                table.foreign_keys.append(fk)
            continue
        column = model.column(f.name)
        has_default: bool | None = None if "@id" in f.attributes else False
        default = None
        if "@default" in f.attributes:
            has_default, default = _default(f.attributes["@default"], enums[f.type][1] if f.type in enums else None)
        nullable = None if f.modifier == "[]" else f.modifier == "?"
        table.columns[column] = Column(_column_type(f, enums), nullable, has_default, default)
        if "@id" in f.attributes:
            table.primary_key = _field_index(column, f.attributes["@id"])
        if "@unique" in f.attributes:
            table.indexes.append(_field_index(column, f.attributes["@unique"]))
    for attr, args in model.block_attributes:
        if attr == "@@id":
            table.primary_key = _index(model, args, unique=True)
        elif attr in ("@@unique", "@@index"):
            table.indexes.append(_index(model, args, unique=attr == "@@unique"))
        elif attr != "@@ignore":
            raise PrismaSchemaError(f"model {model.table}: unsupported {attr}")
    return table


def parse(text: str) -> Schema:
    """The PostgreSQL schema that `text` (the contents of a schema.prisma) declares."""
    blocks = _blocks(text)
    enums = {name: _enum(name, lines) for kind, name, lines in blocks if kind == "enum"}
    models = {name: _read_model(name, lines) for kind, name, lines in blocks if kind == "model"}
    return Schema(
        tables={model.table: _table(model, models, enums) for model in models.values()},
        enums={db_name: tuple(values.values()) for db_name, values in enums.values()},
    )
