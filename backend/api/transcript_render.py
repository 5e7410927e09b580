"""A session's whole conversation as a download: JSON or Markdown text, produced piece by piece from pages of
messages so a long conversation is never held in memory as one document."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

from backend.api.schemas import MessagePublic, SessionPublic
from backend.store.models import ChatMessage, ChatSession

_HEADINGS = {"user": "User", "assistant": "Assistant", "system": "System", "tool": "Tool result"}


async def json_transcript(session: ChatSession, pages: AsyncIterator[list[ChatMessage]]) -> AsyncIterator[str]:
    """One JSON object: the session's fields (as `SessionPublic`) and `messages`, each a `MessagePublic`."""
    head = SessionPublic.of(session).model_dump_json()
    # The session object is closed by hand so the messages array can follow it without building it whole.
    yield head[:-1] + ',"messages":['
    first = True
    async for page in pages:
        body = ",".join(MessagePublic.of(m).model_dump_json() for m in page)
        yield body if first else "," + body
        first = False
    yield "]}"


async def markdown_transcript(session: ChatSession, pages: AsyncIterator[list[ChatMessage]]) -> AsyncIterator[str]:
    """`# title`, then one `## User` / `## Assistant` / `## Tool result` section per message; tool calls and
    results are fenced blocks."""
    title = _one_line(session.title) or "Chat session"
    yield f"# {title}\n\nSession `{session.id}`, started {session.created_at.isoformat()}.\n"
    async for page in pages:
        yield "".join(_message_markdown(m) for m in page)


def _message_markdown(m: ChatMessage) -> str:
    heading = _HEADINGS.get(m.role, m.role.capitalize())
    if m.role == "tool":
        heading += f": `{m.name}`" if m.name else ""
        return f"\n## {heading}\n\n{_fenced(m.content or '', 'json' if _is_json(m.content) else 'text')}"
    out = f"\n## {heading}\n\n"
    if m.content:
        out += m.content.rstrip("\n") + "\n"
    if m.refusal:
        out += f"\n> Refused: {_one_line(m.refusal)}\n"
    for call in m.tool_calls or []:
        name, arguments = _call_parts(call)
        out += f"\nTool call `{name}`:\n\n{_fenced(arguments, 'json')}"
    return out


def _call_parts(call: dict[str, Any]) -> tuple[str, str]:
    nested = call.get("function")
    function: dict[str, Any] = nested if isinstance(nested, dict) else call
    name = str(function.get("name", "?"))
    arguments = function.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return name, arguments


def _fenced(text: str, language: str) -> str:
    # A fence longer than any backtick run inside, so the content cannot close it early.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text.rstrip(chr(10))}\n{fence}\n"


def _is_json(text: str | None) -> bool:
    if not text:
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())
