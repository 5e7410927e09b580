"""Frontend tools: tools the host app declares per request and runs in the browser (navigate, fill a form, read the
selection). The model sees them like any tool; the turn never runs them, it waits for the browser's output.

A declaration is `{name, description, inputSchema}` (the AI SDK's shape). It comes from a browser, so it is
bounded (count, sizes, depth), its schema must be a valid JSON Schema of an object, and its name may not take the
name of a server tool: the model must never be able to call the browser when it means the server, or the reverse.
"""

from __future__ import annotations

import re
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

MAX_TOOLS = 32
MAX_DESCRIPTION_CHARS = 2_000
MAX_SCHEMA_BYTES = 16 * 1024
MAX_SCHEMA_DEPTH = 16
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")


@dataclass(frozen=True, slots=True)
class FrontendTool:
    name: str
    description: str
    input_schema: dict[str, Any]

    def schema(self) -> dict[str, Any]:
        """The entry of the OpenAI `tools=[...]` list."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.input_schema},
        }

    def declaration(self) -> dict[str, Any]:
        """As declared (and as stored with the session)."""
        return {"name": self.name, "description": self.description, "inputSchema": self.input_schema}


def frontend_tools(declared: Sequence[Mapping[str, Any]], *, taken: Container[str]) -> tuple[FrontendTool, ...]:
    """The declarations checked; `ValueError` naming the first problem. `taken`: names of the server's tools."""
    if len(declared) > MAX_TOOLS:
        raise ValueError(f"at most {MAX_TOOLS} frontend tools per request, got {len(declared)}")
    tools: dict[str, FrontendTool] = {}
    for i, raw in enumerate(declared):
        tool = _checked(raw, where=f"tools[{i}]")
        if tool.name in taken:
            raise ValueError(f"tools[{i}]: {tool.name!r} is the name of a server tool; choose another")
        if tool.name in tools:
            raise ValueError(f"tools[{i}]: {tool.name!r} is declared twice")
        tools[tool.name] = tool
    return tuple(tools.values())


def _checked(raw: Mapping[str, Any], *, where: str) -> FrontendTool:
    name, description = raw.get("name"), raw.get("description", "")
    schema = raw.get("inputSchema", {"type": "object", "properties": {}})
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}: name must match ^[a-zA-Z0-9_-]{{1,64}}$")
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION_CHARS:
        raise ValueError(f"{where}: description must be text of at most {MAX_DESCRIPTION_CHARS} characters")
    if not isinstance(schema, dict):
        raise ValueError(f"{where}: inputSchema must be a JSON Schema object")
    if _deeper_than(schema, MAX_SCHEMA_DEPTH):
        raise ValueError(f"{where}: inputSchema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    size = len(orjson.dumps(schema))
    if size > MAX_SCHEMA_BYTES:
        raise ValueError(f"{where}: inputSchema is {size} bytes as JSON; at most {MAX_SCHEMA_BYTES}")
    if schema.get("type", "object") != "object":
        raise ValueError(f"{where}: inputSchema must describe an object (type: object)")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as e:
        raise ValueError(f"{where}: inputSchema is not a valid JSON Schema: {e.message}") from None
    return FrontendTool(name, description, {"type": "object", "properties": {}, **schema})


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether `value` nests objects and arrays more than `limit` levels deep (iterative: no recursion limit)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
