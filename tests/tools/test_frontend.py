"""Frontend tool declarations: what the browser declares is bounded and checked before the model sees it."""

from __future__ import annotations

from typing import Any

import pytest

from backend.tools import frontend
from backend.tools.frontend import FrontendTool, frontend_tools
from backend.tools.registry import TurnTools, default_registry

SCHEMA = {"type": "object", "properties": {"selector": {"type": "string"}}}


def declared(**extra: Any) -> dict[str, Any]:
    return {"name": "highlight", "description": "Highlight an element.", "inputSchema": SCHEMA, **extra}


def test_a_declaration_becomes_an_openai_tool_schema() -> None:
    [tool] = frontend_tools([declared()], taken=())
    assert tool.schema() == {
        "type": "function",
        "function": {"name": "highlight", "description": "Highlight an element.", "parameters": SCHEMA},
    }
    assert tool.declaration() == declared()


def test_a_schema_without_properties_gets_them() -> None:
    [tool] = frontend_tools([{"name": "ping"}], taken=())
    assert tool.input_schema == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("tools", "says"),
    [
        ([declared(name="calculate")], "server tool"),
        ([declared(name="has space")], "name must match"),
        ([declared(name="x" * 65)], "name must match"),
        ([declared(), declared()], "declared twice"),
        ([declared(description="d" * (frontend.MAX_DESCRIPTION_CHARS + 1))], "description"),
        ([declared(inputSchema=[])], "JSON Schema object"),
        ([declared(inputSchema={"type": "array"})], "describe an object"),
        ([declared(inputSchema={"type": "object", "properties": {"a": {"type": "nope"}}})], "not a valid JSON Schema"),
        ([declared(inputSchema={"type": "object", "description": "x" * frontend.MAX_SCHEMA_BYTES})], "bytes"),
        ([declared(name=f"t{i}") for i in range(frontend.MAX_TOOLS + 1)], "at most"),
    ],
)
def test_bad_declarations_are_refused_with_the_reason(tools: list[dict[str, Any]], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        frontend_tools(tools, taken=default_registry())


def test_a_deeply_nested_schema_is_refused_without_recursion() -> None:
    schema: dict[str, Any] = {"type": "object"}
    node = schema
    for _ in range(5000):  # far past Python's recursion limit
        node["not"] = {}
        node = node["not"]
    with pytest.raises(ValueError, match="nests deeper"):
        frontend_tools([declared(inputSchema=schema)], taken=())


def test_turn_tools_say_what_each_call_waits_for() -> None:
    registry = default_registry()
    tools = TurnTools(registry, frontend=[FrontendTool("highlight", "", SCHEMA)], needing_approval={"calculate"})
    assert tools.awaiting("highlight") == "frontend"
    assert tools.awaiting("ask_user") == "ask_user"
    assert tools.awaiting("calculate") == "approval"
    assert tools.awaiting("get_current_time") is None
    assert tools.awaiting("unknown") is None
    assert tools.get("highlight") is None  # never run on the server
    assert [s["function"]["name"] for s in tools.schemas()][-1] == "highlight"


def test_a_frontend_tool_cannot_take_a_server_tools_place() -> None:
    registry = default_registry()
    tools = TurnTools(registry, frontend=[FrontendTool("calculate", "the browser's", SCHEMA)])
    assert tools.awaiting("calculate") is None
    assert [s["function"]["name"] for s in tools.schemas()].count("calculate") == 1
