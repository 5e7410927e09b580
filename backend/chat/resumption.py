"""The start of a continuation after answers: settle the calls that waited for a person before the model speaks.

When the last call of an assistant message that waited is answered (`human_input.py`), a turn without a user message
continues that message. Before its first step it runs the calls the user approved (their results replace the
placeholders, once: a compare-and-set on the call's state) and tells the client what came of every call that waited:
the output, the error, or `tool-output-denied`. A client that answered through useChat already shows its own
answers; one that answered over REST or from another tab learns them here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from backend.chat import events as ev
from backend.chat.tokens import truncate_middle
from backend.chat.turn_state import TurnRequest, TurnServices
from backend.observability.telemetry import TurnTelemetry
from backend.store.awaiting import AwaitingCall
from backend.tools.base import ToolContext, ToolOutcome, run_tool
from backend.tools.registry import TurnTools


async def settle_answered(
    request: TurnRequest, services: TurnServices, telemetry: TurnTelemetry
) -> AsyncIterator[ev.TurnEvent]:
    """Run the approved calls of the message `request.resume` continues and yield what came of each answered call."""
    assert request.resume is not None and services.awaiting is not None
    calls = await services.awaiting.asked_with(request.session_id, request.resume.asked_in)
    tools = await services.tools_for(request) if any(c.state == "approved" for c in calls) else None
    for call in calls:
        if call.state == "approved":
            assert tools is not None
            outcome = await _run_approved(request, tools, call)
            telemetry.tool(
                name=call.tool_name,
                call_id=call.tool_call_id,
                ok=outcome.ok,
                duration_ms=outcome.duration_ms,
                error=outcome.error_text,
            )
            content = tool_result_text(services, outcome.output)
            stored = await services.awaiting.resolve(
                request.session_id,
                call.tool_call_id,
                expected=("approved",),
                state="answered" if outcome.ok else "failed",
                content=content,
                token_count=result_tokens(services, call.tool_call_id, content),
            )
            if stored:
                yield ev.ToolAnswered(call.tool_call_id, outcome.ok, outcome.output, outcome.error_text)
                continue
            # Settled meanwhile (a new message closed it; another attempt of this continuation stored its run).
            refreshed = await services.awaiting.find(request.session_id, call.tool_call_id)
            if refreshed is None:
                continue
            call = refreshed
        if call.state == "denied":
            yield ev.ToolDenied(call.tool_call_id, _stored_result(call)[2] or "denied")
        elif call.state in ("answered", "failed"):
            ok, output, error_text = _stored_result(call)
            yield ev.ToolAnswered(call.tool_call_id, ok, output, error_text)


async def _run_approved(request: TurnRequest, tools: TurnTools, call: AwaitingCall) -> ToolOutcome:
    ctx = ToolContext(
        user_id=request.user_id,
        session_id=request.session_id,
        tool_call_id=call.tool_call_id,
        is_authenticated=request.is_authenticated,
    )
    return await run_tool(tools.get(call.tool_name), call.tool_name, call.input, ctx)


def tool_result_text(services: TurnServices, output: Any) -> str:
    """A tool's output as the text its tool message stores, cut in the middle when over the output cap."""
    text = output if isinstance(output, str) else orjson.dumps(output, default=str).decode()
    cap, counter = services.limits.max_tool_output_tokens, services.counter
    if len(text) > cap and counter.count_text(text) > cap:  # a token is at least one character
        text = truncate_middle(text, cap, counter)
    return text


def result_tokens(services: TurnServices, tool_call_id: str, content: str) -> int:
    """What a tool message with `content` adds to a prompt."""
    return services.counter.count_message({"role": "tool", "tool_call_id": tool_call_id, "content": content})


def _stored_result(call: AwaitingCall) -> tuple[bool, Any, str | None]:
    try:
        output: Any = orjson.loads(call.content or "null")
    except orjson.JSONDecodeError:
        output = call.content
    if call.state == "answered":
        return True, output, None
    error = output.get("error") if isinstance(output, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return False, output, message if isinstance(message, str) else "failed"
