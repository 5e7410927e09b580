"""Stored messages as AG-UI messages (a `MESSAGES_SNAPSHOT`), and whether a client's history agrees with them.

Ids are the ones the stream gives (`backend/chat/agui_stream.py`): a user message keeps its client id, the k-th
step of a reply that produced anything is `<reply id>-<k>` (its reasoning `<that>-reasoning-<n>`), a result is
`result-<tool call id>`. So a snapshot taken after a run replaces the streamed messages in place.

AG-UI sends the whole history with every run. Storage is the truth: the client's history (without the message it
adds) must say what storage says, compared by what a person would call the conversation (who said what, which
tools were called, whose results came back), not by ids or whitespace. Anything else (a client that missed a turn
another tab ran, an edited or truncated history) is answered with a snapshot of what is stored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ag_ui.core import AssistantMessage, FunctionCall, Message, ReasoningMessage, ToolCall, ToolMessage, UserMessage

from backend.chat.agui_stream import reasoning_message_id, result_message_id, step_message_id
from backend.chat.turn_state import INTERRUPTED_MARK
from backend.store.models import ChatMessage


def agui_messages(stored: Iterable[ChatMessage], reply_id: Callable[[ChatMessage], str | None]) -> list[Message]:
    """`stored` (oldest first) as AG-UI messages. `reply_id(user message)` names the reply to that message (None:
    the reply is named after its first stored row)."""
    out: list[Message] = []
    reply: str | None = None
    named: str | None = None
    steps = 0
    for message in stored:
        if message.role == "user":
            out.append(UserMessage(id=message.client_message_id or str(message.id), content=message.content or ""))
            reply, named, steps = None, reply_id(message), 0
        elif message.role == "assistant":
            text = (message.content or message.refusal or "").removesuffix(INTERRUPTED_MARK).rstrip()
            calls = [_tool_call(call) for call in message.tool_calls or []]
            if not _produced(message):
                continue  # the stream opens no message for a step that produced nothing
            if reply is None:
                reply = named or f"msg-{message.id}"
            step = step_message_id(reply, steps)
            steps += 1
            if message.reasoning:
                out.append(ReasoningMessage(id=reasoning_message_id(step, 0), content=message.reasoning))
            if text or calls:
                out.append(AssistantMessage(id=step, content=text or None, tool_calls=calls or None))
        elif message.role == "tool" and message.tool_call_id:
            content = message.content or ""
            out.append(
                ToolMessage(
                    id=result_message_id(message.tool_call_id),
                    tool_call_id=message.tool_call_id,
                    content=content,
                    error=_error_of(content),
                )
            )
    return out


def reply_steps(stored: Sequence[ChatMessage]) -> int:
    """How many steps of the last reply in `stored` (oldest first) have a message: where a continuation of that
    reply goes on numbering its steps' messages."""
    steps = 0
    for message in stored:
        if message.role == "user":
            steps = 0
        elif message.role == "assistant" and _produced(message):
            steps += 1
    return steps


def _produced(message: ChatMessage) -> bool:
    text = (message.content or message.refusal or "").removesuffix(INTERRUPTED_MARK).rstrip()
    return bool(text or message.tool_calls or message.reasoning)


def conflicts(client: Sequence[dict[str, Any]], stored: Sequence[Message]) -> bool:
    """Whether the client's history (AG-UI messages as JSON, camelCase) says something other than `stored`."""
    theirs = [s for s in map(_said, client) if s is not None]
    ours = [s for s in (_said(m.model_dump(by_alias=True)) for m in stored) if s is not None]
    return theirs != ours


def _said(message: dict[str, Any]) -> tuple[Any, ...] | None:
    """What a message says, for comparing histories; None for what storage does not keep (system and developer
    messages, reasoning, activity)."""
    role = message.get("role")
    if role == "user":
        return ("user", _words(_text(message.get("content"))))
    if role == "assistant":
        calls = tuple(str(call.get("id")) for call in message.get("toolCalls") or [] if isinstance(call, dict))
        text = _words(_text(message.get("content")).removesuffix(INTERRUPTED_MARK))
        return ("assistant", text, calls) if text or calls else None
    if role == "tool":
        return ("tool", message.get("toolCallId"))
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text") or "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _words(text: str) -> str:
    return " ".join(text.split())


def _tool_call(call: dict[str, Any]) -> ToolCall:
    function = call.get("function") or {}
    return ToolCall(
        id=str(call.get("id", "")),
        function=FunctionCall(name=str(function.get("name", "unknown")), arguments=function.get("arguments") or "{}"),
    )


def _error_of(content: str) -> str | None:
    """The message of a stored failed result (`{"error": {"message": ...}}` or `{"error": "..."}`)."""
    try:
        parsed = json.loads(content)
    except ValueError:
        return None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(error, dict):
        return str(error.get("message") or "the tool failed")
    return error if isinstance(error, str) else None
