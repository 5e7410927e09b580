"""The mock model's scenarios: what each ``[[mock:<scenario> ...]]`` marker does to a reply.

A scenario adds to the turn's ``Plan`` (text, tool calls, pace, faults) or returns an error
response that ends the request. docs/mock-llm.md lists them for users; keep it in step with
``SCENARIOS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson
from starlette.responses import Response

from backend.devtools._mock_markers import Marker, MarkerError
from backend.devtools._mock_wire import Plan, StreamError, ToolCall, encode_text, error_response, filler

DEFAULT_TEXT_TOKENS = 20


@dataclass
class Turn:
    """What a scenario sees of one request, and the plan it adds to."""

    seq: int
    model: str
    prompt_tokens: int
    default_tokens: int | None
    plan: Plan
    chained: bool = False
    """Responses API: the request continues a stored response (``previous_response_id``)."""


Scenario = Callable[[Turn, Marker], Response | None]
"""Adds to ``turn.plan``, or returns an error response that ends the request."""


def _text(turn: Turn, marker: Marker) -> None:
    """Plain text: the given ``content``, or ``tokens`` filler words (default: the server's default)."""
    turn.plan.answered = True
    if "content" in marker.params:
        turn.plan.content += encode_text(str(marker.params["content"]))
    else:
        count = marker.count("tokens", turn.default_tokens or DEFAULT_TEXT_TOKENS)
        turn.plan.content += [b'"Lorem"', *filler(count - 1)][:count]


def _tool(turn: Turn, marker: Marker, *, malformed: bool = False) -> None:
    """One tool call to ``name`` (default get_current_time) with JSON ``args`` (default ``{}``).

    The arguments stream in several fragments; repeat the marker for parallel calls.
    """
    args = marker.params.get("args", {})
    arguments = args if isinstance(args, str) else orjson.dumps(args).decode()
    if malformed:
        arguments = arguments[:-1]
    turn.plan.answered = True
    call_id = f"call_mock_{turn.seq}_{len(turn.plan.tool_calls)}"
    turn.plan.tool_calls.append(ToolCall(call_id, str(marker.params.get("name", "get_current_time")), arguments))


def _bad_tool_args(turn: Turn, marker: Marker) -> None:
    """Like ``tool``, but the arguments are invalid JSON (their last character is cut off).

    With ``times=N`` the call is malformed only N times; afterwards it behaves like ``tool``.
    """
    _tool(turn, marker, malformed=True)


def _rate_limit(turn: Turn, marker: Marker) -> Response:
    """HTTP 429 ``rate_limit_exceeded``; ``retry_after`` seconds (default 1) go into the retry headers."""
    seconds = marker.number("retry_after", 1)
    message = f"Rate limit reached for {turn.model} on requests per min (RPM). Please try again in {seconds:g}s."
    headers = {"retry-after": str(math.ceil(seconds)), "retry-after-ms": str(round(seconds * 1000))}
    return error_response(429, message, "requests", "rate_limit_exceeded", headers=headers)


def _server_error(turn: Turn, marker: Marker) -> Response:
    """HTTP ``status`` (default 500) with OpenAI's server-error body."""
    status = marker.count("status", 500)
    if not 400 <= status <= 599:
        raise MarkerError(f"{marker.text}: status must be an HTTP error status")
    message = "The server had an error while processing your request. Sorry about that!"
    return error_response(status, message, "server_error")


def _gateway(marker: Marker) -> bool:
    """Whether the marker says ``gateway=litellm``: the error as LiteLLM proxy passes it on (the HTTP status as a
    string code, its exception class named in the message, no type)."""
    gateway = marker.params.get("gateway")
    if gateway not in (None, "litellm"):
        raise MarkerError(f"{marker.text}: gateway must be litellm")
    return gateway == "litellm"


def _region_block(turn: Turn, marker: Marker) -> Response:
    """HTTP 403 ``unsupported_country_region_territory``, as OpenAI answers from a blocked region (``gateway=litellm``:
    as LiteLLM proxy passes it on)."""
    message = "Country, region, or territory not supported"
    if _gateway(marker):
        return error_response(403, f"litellm.PermissionDeniedError: OpenAIException - {message}", None, "403")
    return error_response(403, message, "request_forbidden", "unsupported_country_region_territory")


def _context_length(turn: Turn, marker: Marker) -> Response:
    """HTTP 400 ``context_length_exceeded`` for a model with a window of ``limit`` tokens (default 128000)
    (``gateway=litellm``: as LiteLLM proxy passes it on)."""
    limit = marker.count("limit", 128000)
    message = (
        f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
        f"{limit + turn.prompt_tokens} tokens. Please reduce the length of the messages."
    )
    if _gateway(marker):
        wrapped = f"litellm.ContextWindowExceededError: litellm.BadRequestError: OpenAIException - {message}"
        return error_response(400, wrapped, None, "400")
    return error_response(400, message, "invalid_request_error", "context_length_exceeded", param="messages")


def _reasoning(turn: Turn, marker: Marker) -> None:
    """Reasoning streamed before the reply: the given ``content``, or ``tokens`` filler words (default 10), in the
    delta field ``field`` (``reasoning_content``, the default, or ``reasoning``). It does not choose the reply."""
    field = marker.params.get("field", "reasoning_content")
    if field not in ("reasoning_content", "reasoning"):
        raise MarkerError(f"{marker.text}: field must be reasoning_content or reasoning")
    turn.plan.reasoning_field = field
    if "content" in marker.params:
        turn.plan.reasoning += encode_text(str(marker.params["content"]))
    else:
        count = marker.count("tokens", 10)
        turn.plan.reasoning += [b'"Hmm"', *filler(count - 1)][:count]


def _usage(turn: Turn, marker: Marker) -> None:
    """Report ``cached`` prompt tokens (default 0) as served from the provider's cache, in the usage."""
    turn.plan.cached_tokens = marker.count("cached", 0)


def _cut(turn: Turn, marker: Marker) -> None:
    """Drop the connection after ``after`` chunks (default 3): no finish chunk, no ``[DONE]``."""
    turn.plan.cut_after = marker.count("after", 3)


def _stall(turn: Turn, marker: Marker) -> None:
    """Send ``after`` chunks (default 2), go silent for ``seconds`` (default 30), then carry on."""
    turn.plan.stall_after = marker.count("after", 2)
    turn.plan.stall_seconds = marker.number("seconds", 30)


def _stream_error(turn: Turn, marker: Marker) -> None:
    """An error event inside the stream after ``after`` events (default 2), ending it: ``code`` (default
    ``server_error``; ``code=408`` is how LiteLLM proxy reports a stalled upstream) and ``message``. Over the
    Responses API, ``event=failed`` sends ``response.failed`` instead of an ``error`` event."""
    event = str(marker.params.get("event", "error"))
    if event not in ("error", "failed"):
        raise MarkerError(f"{marker.text}: event must be error or failed")
    code = str(marker.params.get("code", "server_error"))
    message = str(marker.params.get("message", "The server had an error while processing your request."))
    turn.plan.stream_error = StreamError(marker.count("after", 2), code, message, event)


def _incomplete(turn: Turn, marker: Marker) -> None:
    """Responses API only: the response ends ``incomplete`` for ``reason`` (default ``max_output_tokens``)."""
    turn.plan.incomplete_reason = str(marker.params.get("reason", "max_output_tokens"))


def _expire_response(turn: Turn, marker: Marker) -> Response | None:
    """Responses API: a request that continues a stored response (``previous_response_id``) is answered HTTP 400
    ``previous_response_not_found``, as if it had expired; one with the whole input is answered as usual."""
    if not turn.chained:
        return None
    message = "Previous response with id not found."
    return error_response(
        400, message, "invalid_request_error", "previous_response_not_found", param="previous_response_id"
    )


SCENARIOS: Mapping[str, Scenario] = {
    "text": _text,
    "tool": _tool,
    "bad_tool_args": _bad_tool_args,
    "rate_limit": _rate_limit,
    "server_error": _server_error,
    "region_block": _region_block,
    "context_length": _context_length,
    "cut": _cut,
    "stall": _stall,
    "reasoning": _reasoning,
    "usage": _usage,
    "stream_error": _stream_error,
    "incomplete": _incomplete,
    "expire_response": _expire_response,
}
