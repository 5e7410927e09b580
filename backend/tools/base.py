"""The tool plug-in contract: a `Tool` declares its arguments as a pydantic model, `run_tool` runs it safely.

A tool is a small class with a name, a description the model reads, an `args_model` and an async `execute`.
`run_tool` is the one place that turns whatever a tool does (bad arguments, a timeout, an exception, an
unserialisable result) into a `ToolOutcome`; the turn engine never sees a tool's exception.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

from pydantic import BaseModel, ValidationError

logger = logging.getLogger("copilot.tools")

ArgsT = TypeVar("ArgsT", bound=BaseModel)

ToolErrorType = Literal["timeout", "invalid_arguments", "tool_error", "unknown_tool", "auth_required"]
"""The `error.type` values of a failed `ToolOutcome`."""

DEFAULT_MAX_OUTPUT_CHARS = 50_000
"""Serialised outputs longer than this are cut in the middle by `run_tool`."""

_MAX_VALIDATION_ERRORS = 5
_ERROR_TEXT_CHARS = 300


@dataclass(frozen=True)
class ToolContext:
    """Who is calling a tool and from where. Built by the turn engine for each tool call."""

    user_id: str
    session_id: UUID
    tool_call_id: str
    is_authenticated: bool
    """False for the development (anonymous) user."""
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    """Whatever later features hand to tools (clients, settings); empty by default."""


class Tool(ABC, Generic[ArgsT]):
    """Base class of every tool. Subclasses set the class attributes and implement `execute`."""

    name: str
    """What the model calls; must match `^[a-zA-Z0-9_-]{1,64}$`."""
    description: str
    """What the model reads to decide when to call the tool."""
    args_model: type[ArgsT]
    """Pydantic model of the arguments; its JSON schema is the tool's `parameters`."""
    timeout_seconds: float = 30.0
    """`run_tool` stops `execute` after this long and reports a timeout."""
    requires_auth: bool = False
    """The tool needs an authenticated, non-anonymous user."""
    is_long_running: bool = False
    """The tool may take minutes; the turn engine runs it in the background."""
    requires_approval: bool = False
    """Each call waits for the user's approval before it runs (`COPILOT_TOOLS_REQUIRING_APPROVAL` can say so too);
    a denied call does not run and the model is told."""
    answered_by_user: bool = False
    """The call is never run here: the user answers it, the way a frontend tool's output comes back (`ask_user`).
    `execute` is not called."""

    @abstractmethod
    async def execute(self, args: ArgsT, ctx: ToolContext) -> Any:
        """Do the work and return a JSON-serialisable value. Raise to report a failure to the model.

        Must not block the event loop (the timeout could not interrupt it): run blocking work in a thread.
        """

    def schema(self) -> dict[str, Any]:
        """The entry of the OpenAI `tools=[...]` list. A fresh copy of a cached value; safe to mutate."""
        return copy.deepcopy(_function_schema(self.name, self.description, self.args_model))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {getattr(self, 'name', '?')!r}>"


@functools.cache
def _function_schema(name: str, description: str, args_model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters_schema(args_model)},
    }


def parameters_schema(args_model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of `args_model`, made friendly to providers.

    `$defs` references are inlined unless the model is recursive (then `$defs` stays, which OpenAI accepts),
    the top-level `title` (the Python class name) is dropped, and `type: object` and `properties` are always
    present, even for a tool without arguments.
    """
    raw = args_model.model_json_schema()
    defs: dict[str, Any] = raw.pop("$defs", {})
    try:
        schema: dict[str, Any] = _inline(raw, defs, frozenset())
    except _RecursiveSchema:
        schema = raw
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith(_DEFS_PREFIX):  # a recursive root model: expand the root once
            root = schema.pop("$ref")
            schema = {**defs[root.removeprefix(_DEFS_PREFIX)], **schema}
        schema["$defs"] = defs
    schema.pop("title", None)
    schema.setdefault("type", "object")
    schema.setdefault("properties", {})
    return schema


_DEFS_PREFIX = "#/$defs/"


class _RecursiveSchema(Exception):
    pass


def _inline(node: Any, defs: Mapping[str, Any], seen: frozenset[str]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith(_DEFS_PREFIX):
        def_name = ref.removeprefix(_DEFS_PREFIX)
        if def_name in seen or def_name not in defs:
            raise _RecursiveSchema(def_name)
        target = _inline(defs[def_name], defs, seen | {def_name})
        siblings = {key: _inline(value, defs, seen) for key, value in node.items() if key != "$ref"}
        return {**target, **siblings}  # pydantic puts `description`/`default` next to `$ref`; those win
    return {key: _inline(value, defs, seen) for key, value in node.items()}


@dataclass(frozen=True)
class ToolOutcome:
    """What came of one tool call: always produced, whatever the tool did."""

    ok: bool
    output: Any
    """JSON-serialisable result for the model; on failure `{"error": {"type": ..., "message": ...}}`."""
    error_text: str | None
    """Short human-readable text for the UI when not `ok`."""
    duration_ms: float


class _Failure(Exception):
    def __init__(self, kind: ToolErrorType, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


async def run_tool(
    tool: Tool[Any] | None,
    name: str,
    raw_arguments: str | Mapping[str, Any],
    ctx: ToolContext,
    *,
    max_output_chars: int = DEFAULT_MAX_OUTPUT_CHARS,
) -> ToolOutcome:
    """Run one tool call and describe the result. Never raises, except `asyncio.CancelledError`.

    `tool` is the registry's answer for `name` (None when unknown). `raw_arguments` is the model's JSON text
    (an empty string counts as `{}`) or an already parsed object. An output whose JSON is longer than
    `max_output_chars` is replaced by a string that keeps its head and tail.
    """
    started = time.perf_counter()
    try:
        output = await _invoke(tool, name, raw_arguments, ctx)
        output = _normalize_output(name, output, max_output_chars)
    except _Failure as exc:
        failure = exc
    except Exception as exc:  # the tool's own error (CancelledError is a BaseException and propagates)
        logger.exception("tool %r failed (call %s)", name, ctx.tool_call_id)
        failure = _Failure("tool_error", str(exc) or type(exc).__name__)
    else:
        return ToolOutcome(ok=True, output=output, error_text=None, duration_ms=_elapsed_ms(started))
    return ToolOutcome(
        ok=False,
        output={"error": {"type": failure.kind, "message": failure.message}},
        error_text=_shorten(failure.message, _ERROR_TEXT_CHARS),
        duration_ms=_elapsed_ms(started),
    )


async def _invoke(tool: Tool[Any] | None, name: str, raw_arguments: str | Mapping[str, Any], ctx: ToolContext) -> Any:
    if tool is None:
        raise _Failure("unknown_tool", f"Unknown tool {name!r}.")
    if tool.requires_auth and not ctx.is_authenticated:
        raise _Failure("auth_required", f"Tool {name!r} is only available to signed-in users.")
    args = _parse_arguments(tool, raw_arguments)
    deadline = asyncio.timeout(tool.timeout_seconds)
    try:
        async with deadline:
            return await tool.execute(args, ctx)
    except TimeoutError:
        if not deadline.expired():
            raise  # the tool's own TimeoutError: a tool error like any other
        logger.warning("tool %r timed out after %gs (call %s)", name, tool.timeout_seconds, ctx.tool_call_id)
        raise _Failure("timeout", f"Tool {name!r} timed out after {tool.timeout_seconds:g} seconds.") from None


def _parse_arguments(tool: Tool[Any], raw_arguments: str | Mapping[str, Any]) -> BaseModel:
    if isinstance(raw_arguments, str):
        text = raw_arguments.strip() or "{}"  # some providers send "" for a call without arguments
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _Failure("invalid_arguments", f"Arguments are not valid JSON: {exc}.") from None
    else:
        parsed = raw_arguments
    if not isinstance(parsed, Mapping):
        raise _Failure("invalid_arguments", f"Arguments must be a JSON object, not {_json_type(parsed)}.")
    try:
        args: BaseModel = tool.args_model.model_validate(dict(parsed))
    except ValidationError as exc:
        raise _Failure("invalid_arguments", f"Invalid arguments: {_describe_validation(exc)}") from None
    return args


def _describe_validation(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    parts = []
    for error in errors[:_MAX_VALIDATION_ERRORS]:
        location = ".".join(str(part) for part in error["loc"])
        parts.append(f"{location}: {error['msg']}" if location else error["msg"])
    if len(errors) > _MAX_VALIDATION_ERRORS:
        parts.append(f"and {len(errors) - _MAX_VALIDATION_ERRORS} more")
    return "; ".join(parts) + "."


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null" if value is None else type(value).__name__


def _normalize_output(name: str, output: Any, max_output_chars: int) -> Any:
    """The output as plain JSON values (tuples become lists), or a cut string if it is too long."""
    if isinstance(output, str):
        return truncate_middle_chars(output, max_output_chars)
    try:
        text = json.dumps(output, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:  # ValueError: NaN/inf or a circular reference
        logger.error("tool %r returned a value that is not JSON-serializable: %s", name, exc)
        raise _Failure("tool_error", f"Tool {name!r} returned a value that is not JSON-serializable: {exc}") from None
    if len(text) > max_output_chars:
        return truncate_middle_chars(text, max_output_chars)
    return json.loads(text)


_CUT_MARKER = "\n…[{} characters omitted]…\n"


def truncate_middle_chars(text: str, max_chars: int) -> str:
    """`text` cut to at most `max_chars` characters by dropping its middle (`chat.tokens` cuts by tokens).

    The head and tail are kept (the head gets the odd character) around a marker, `\\n…[N characters omitted]…\\n`,
    which counts against the limit. If the limit is too small even for the marker, only a head is kept.
    """
    if len(text) <= max_chars:
        return text
    if max_chars <= 0:
        return ""
    # Reserve room for the widest count the marker could hold, so the result never exceeds max_chars.
    keep = max_chars - len(_CUT_MARKER.format(len(text)))
    if keep <= 0:
        return text[:max_chars]
    head, tail = keep - keep // 2, keep // 2
    return text[:head] + _CUT_MARKER.format(len(text) - keep) + text[len(text) - tail :]


def _shorten(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000
