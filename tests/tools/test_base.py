import asyncio
import logging
import math
import uuid
from typing import Any

import pytest
from pydantic import BaseModel, Field

from backend.tools.base import Tool, ToolContext, parameters_schema, run_tool, truncate_middle_chars


def make_ctx(*, authenticated: bool = True) -> ToolContext:
    return ToolContext(user_id="u1", session_id=uuid.uuid4(), tool_call_id="call_1", is_authenticated=authenticated)


class NoArgs(BaseModel):
    pass


class AddArgs(BaseModel):
    a: int
    b: int = Field(default=0, ge=0, description="Second addend.")


class Add(Tool[AddArgs]):
    name = "add"
    description = "Add two numbers."
    args_model = AddArgs

    async def execute(self, args: AddArgs, ctx: ToolContext) -> dict[str, int]:
        return {"sum": args.a + args.b}


class Returns(Tool[NoArgs]):
    """Returns whatever it was built with, or raises it if it is an exception."""

    name = "returns"
    description = "Test tool."
    args_model = NoArgs

    def __init__(self, value: Any) -> None:
        self.value = value

    async def execute(self, args: NoArgs, ctx: ToolContext) -> Any:
        if isinstance(self.value, BaseException):
            raise self.value
        return self.value


class Slow(Tool[NoArgs]):
    name = "slow"
    description = "Sleeps."
    args_model = NoArgs
    timeout_seconds = 0.05

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def execute(self, args: NoArgs, ctx: ToolContext) -> str:
        self.started.set()
        await asyncio.sleep(30)
        return "never"


class Private(Returns):
    name = "private"
    requires_auth = True


# --- ToolContext and schema ------------------------------------------------------------------------------


def test_context_defaults_to_empty_extra_and_is_frozen() -> None:
    ctx = make_ctx()
    assert dict(ctx.extra) == {}
    with pytest.raises(AttributeError):
        ctx.user_id = "other"  # type: ignore[misc]


def test_schema_is_an_openai_function_entry() -> None:
    schema = Add().schema()
    assert schema == {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers.",
            "parameters": {
                "type": "object",
                "properties": {
                    "a": {"title": "A", "type": "integer"},
                    "b": {"title": "B", "type": "integer", "default": 0, "minimum": 0, "description": "Second addend."},
                },
                "required": ["a"],
            },
        },
    }


def test_schema_of_a_tool_without_arguments_has_type_and_properties() -> None:
    assert parameters_schema(NoArgs) == {"type": "object", "properties": {}}


def test_schema_is_a_copy_of_the_cached_value() -> None:
    first = Add().schema()
    first["function"]["parameters"]["properties"].clear()
    assert Add().schema()["function"]["parameters"]["properties"]


class Point(BaseModel):
    x: float
    y: float


class PathArgs(BaseModel):
    start: Point = Field(description="Where to start.")
    stops: list[Point] = []
    end: Point | None = None


def test_schema_inlines_defs() -> None:
    params = parameters_schema(PathArgs)
    assert "$defs" not in params
    assert "$ref" not in str(params)
    assert params["properties"]["start"]["description"] == "Where to start."
    assert params["properties"]["start"]["properties"]["x"]["type"] == "number"
    assert params["properties"]["stops"]["items"]["required"] == ["x", "y"]
    assert {"type": "null"} in params["properties"]["end"]["anyOf"]


class TreeNode(BaseModel):
    label: str
    children: list["TreeNode"] = []


class TreeArgs(BaseModel):
    tree: TreeNode


def test_schema_of_a_recursive_model_keeps_defs() -> None:
    params = parameters_schema(TreeArgs)
    assert params["type"] == "object"
    assert "TreeNode" in params["$defs"]
    assert params["properties"]["tree"] == {"$ref": "#/$defs/TreeNode"}

    root = parameters_schema(TreeNode)  # pydantic makes the root itself a $ref
    assert root["type"] == "object"
    assert set(root["properties"]) == {"label", "children"}
    assert "$ref" not in root


# --- run_tool ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arguments", ['{"a": 2, "b": 3}', {"a": 2, "b": 3}, '  {"a": 2, "b": 3}\n'])
async def test_success(arguments: Any) -> None:
    outcome = await run_tool(Add(), "add", arguments, make_ctx())
    assert outcome.ok
    assert outcome.output == {"sum": 5}
    assert outcome.error_text is None
    assert outcome.duration_ms >= 0


@pytest.mark.parametrize("arguments", ["", "  ", "{}"])
async def test_empty_arguments_mean_no_arguments(arguments: str) -> None:
    outcome = await run_tool(Returns("hi"), "returns", arguments, make_ctx())
    assert outcome.ok and outcome.output == "hi"


def error_of(outcome: Any) -> dict[str, str]:
    assert not outcome.ok
    assert outcome.error_text
    error: dict[str, str] = outcome.output["error"]
    assert set(error) == {"type", "message"}
    return error


async def test_unknown_tool() -> None:
    error = error_of(await run_tool(None, "nope", "{}", make_ctx()))
    assert error["type"] == "unknown_tool"
    assert "nope" in error["message"]


async def test_bad_json() -> None:
    error = error_of(await run_tool(Add(), "add", '{"a": 1,', make_ctx()))
    assert error["type"] == "invalid_arguments"
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize(("arguments", "kind"), [("[1, 2]", "an array"), ("3", "a number"), ("null", "null")])
async def test_json_that_is_not_an_object(arguments: str, kind: str) -> None:
    error = error_of(await run_tool(Add(), "add", arguments, make_ctx()))
    assert error["type"] == "invalid_arguments"
    assert error["message"] == f"Arguments must be a JSON object, not {kind}."


async def test_validation_error_is_concise() -> None:
    error = error_of(await run_tool(Add(), "add", '{"b": -1}', make_ctx()))
    assert error["type"] == "invalid_arguments"
    assert error["message"] == "Invalid arguments: a: Field required; b: Input should be greater than or equal to 0."
    assert "pydantic.dev" not in error["message"]


async def test_auth_required_for_anonymous_user() -> None:
    error = error_of(await run_tool(Private("secret"), "private", "{}", make_ctx(authenticated=False)))
    assert error["type"] == "auth_required"

    outcome = await run_tool(Private("secret"), "private", "{}", make_ctx(authenticated=True))
    assert outcome.ok and outcome.output == "secret"


async def test_timeout() -> None:
    outcome = await run_tool(Slow(), "slow", "{}", make_ctx())
    error = error_of(outcome)
    assert error["type"] == "timeout"
    assert "0.05 seconds" in error["message"]
    assert outcome.duration_ms < 5_000


async def test_a_tools_own_timeout_error_is_a_tool_error() -> None:
    error = error_of(await run_tool(Returns(TimeoutError("upstream timed out")), "returns", "{}", make_ctx()))
    assert error == {"type": "tool_error", "message": "upstream timed out"}


async def test_exception_becomes_tool_error_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="copilot.tools"):
        error = error_of(await run_tool(Returns(RuntimeError("disk on fire")), "returns", "{}", make_ctx()))
    assert error == {"type": "tool_error", "message": "disk on fire"}
    [record] = [r for r in caplog.records if r.name == "copilot.tools"]
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


async def test_exception_without_message_reports_its_type() -> None:
    error = error_of(await run_tool(Returns(KeyError()), "returns", "{}", make_ctx()))
    assert error["message"] == "KeyError"


@pytest.mark.parametrize("value", [object(), {"x": {1, 2}}, math.nan, [math.inf]])
async def test_output_that_is_not_json_serializable(value: Any) -> None:
    error = error_of(await run_tool(Returns(value), "returns", "{}", make_ctx()))
    assert error["type"] == "tool_error"
    assert "not JSON-serializable" in error["message"]


async def test_circular_output() -> None:
    loop: list[Any] = []
    loop.append(loop)
    error = error_of(await run_tool(Returns(loop), "returns", "{}", make_ctx()))
    assert "not JSON-serializable" in error["message"]


async def test_output_is_normalized_to_json_values() -> None:
    outcome = await run_tool(Returns({"pair": (1, 2), 3: None}), "returns", "{}", make_ctx())
    assert outcome.output == {"pair": [1, 2], "3": None}


async def test_cancellation_propagates() -> None:
    tool = Slow()
    tool.timeout_seconds = 30
    task = asyncio.create_task(run_tool(tool, "slow", "{}", make_ctx()))
    await tool.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_big_output_is_truncated_in_the_middle() -> None:
    rows = [{"row": i, "text": "lorem ipsum"} for i in range(5_000)]
    outcome = await run_tool(Returns(rows), "returns", "{}", make_ctx(), max_output_chars=1_000)
    assert outcome.ok
    assert isinstance(outcome.output, str)
    assert len(outcome.output) <= 1_000
    assert outcome.output.startswith('[{"row": 0,')
    assert outcome.output.endswith('{"row": 4999, "text": "lorem ipsum"}]')
    assert "characters omitted]" in outcome.output


async def test_big_string_output_is_truncated_without_json_quoting() -> None:
    text = "a" * 30_000 + "b" * 30_000
    outcome = await run_tool(Returns(text), "returns", "{}", make_ctx())
    assert len(outcome.output) <= 50_000
    assert outcome.output.startswith("aaa") and outcome.output.endswith("bbb")


async def test_small_output_is_untouched() -> None:
    outcome = await run_tool(Returns("x" * 100), "returns", "{}", make_ctx(), max_output_chars=100)
    assert outcome.output == "x" * 100


# --- truncate_middle_chars ---------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [40, 41, 100, 999, 10_000])
def test_truncate_middle_chars_accounts_for_every_character(limit: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(20_000))
    cut = truncate_middle_chars(text, limit)
    assert len(cut) <= limit
    head, _, rest = cut.partition("\n…[")
    count, _, tail = rest.partition(" characters omitted]…\n")
    assert text.startswith(head) and text.endswith(tail)
    assert len(head) + int(count) + len(tail) == len(text)
    assert len(head) - len(tail) in (0, 1)


def test_truncate_middle_chars_with_tiny_limits() -> None:
    assert truncate_middle_chars("abcdef", 6) == "abcdef"
    assert truncate_middle_chars("abcdef" * 10, 5) == "abcde"
    assert truncate_middle_chars("abcdef", 0) == ""
