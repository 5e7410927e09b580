"""Stored chat history → the `messages` of a chat completion request, with tool pairs repaired.

Providers reject a prompt whose tool calls and tool results do not pair up (OpenAI: "messages with role 'tool'
must be a response to a preceeding message with 'tool_calls'"; Anthropic via OpenRouter: "unexpected
tool_use_id found in tool_result blocks"). A session can hold such a history after a crash mid-step, a
cancelled tool, or a step saved in two rows. `repair` restores DESIGN invariant 5 on any list of
OpenAI-format dicts, so the context compressor can reuse it; `to_openai_messages` is the entry point for a
model call. Both are pure and run in time linear in the number of messages.

What `repair` guarantees about its output:

- Every `tool` message follows, after only other `tool` messages of the same batch, the assistant message
  whose `tool_calls` hold its `tool_call_id`; results come in the order of the calls. Results with no
  matching call in the block they sit in, and second results for the same call, are dropped.
- Every tool call is answered exactly once: a call without a result gets `INTERRUPTED_RESULT`.
- No two assistant messages are adjacent. An assistant message that follows another one with nothing, or
  only dropped messages, in between is merged into it: texts joined with a blank line, tool calls
  concatenated in order. This heals the "text row + tool-call row" split the reference system stored.
- Within a message, a tool call id appears once (the first call wins). Calls without an id or a function
  name are dropped; missing or blank `arguments` become `"{}"`, non-string ones are JSON-encoded.
- Messages with nothing to say are dropped: assistant messages with neither text nor tool calls, user and
  system messages with blank content.
- No key holds `None`. `refusal` is never sent (not every OpenAI-compatible server accepts it on input);
  an assistant message that has only a refusal sends it as its text, so the model still sees what it said.
  Tool messages carry only `role`, `tool_call_id` and `content`, and their content is always a string.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from backend.store.models import ChatMessage, MessageRow

INTERRUPTED_RESULT: Final = json.dumps({"error": "no result recorded (interrupted)"})
"""Content of the synthetic result given to a tool call whose result was never stored."""

STORED_SYSTEM_PREFIX: Final = "[System note from earlier in this conversation]\n"
"""Prefix of a stored `system` message, which is sent as a `user` message (see `to_openai_messages`)."""

_ROLES: Final = frozenset({"system", "user", "assistant", "tool"})
_TEXT_ROLES: Final = frozenset({"system", "user", "assistant"})


def to_openai_messages(
    history: Sequence[ChatMessage | Mapping[str, Any]],
    *,
    system_prompt: str | None = None,
    context: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, Any]]:
    """The `messages` argument of `chat.completions.create` for a conversation.

    history: the session's messages in sequence order, as stored rows or OpenAI-format dicts.
    system_prompt: sent first, as the only `system` message, when not blank.
    context: OpenAI-format messages placed between the system prompt and the history, e.g. the summary of
        older messages that compression replaced (the caller gives it a role, usually `user`).

    A `system` message inside `history` is sent as a `user` message prefixed with `STORED_SYSTEM_PREFIX`:
    the system prompt of this call is ours, and a system message stored in the past (an earlier prompt, a
    note a tool added) must not compete with it. Context messages are the caller's and keep their role.
    Context and history are repaired together (see the module docstring), so a summary can end in the
    middle of nothing and the history can start anywhere.
    """
    messages: list[Mapping[str, Any]] = list(context)
    for item in history:
        message = stored_to_openai(item) if isinstance(item, ChatMessage) else item
        messages.append(_demote_system(message) if message.get("role") == "system" else message)
    repaired = repair(messages)
    if system_prompt is not None and system_prompt.strip():
        repaired.insert(0, {"role": "system", "content": system_prompt})
    return repaired


def stored_to_openai(message: ChatMessage) -> dict[str, Any]:
    """A stored message as an OpenAI-format dict, field for field, leaving out fields that are `None`.

    The result is faithful, not safe to send: it keeps `refusal` and whatever the row holds. Pass lists of
    these through `repair` (or `to_openai_messages`) before a model call.
    """
    return row_to_openai(message.row())


def row_to_openai(row: MessageRow) -> dict[str, Any]:
    """`stored_to_openai` for a message read as a plain row."""
    content, tool_calls = row["content"], row["tool_calls"]
    tool_call_id, name, refusal = row["tool_call_id"], row["name"], row["refusal"]
    if tool_calls is None and tool_call_id is None and name is None and refusal is None:
        return {"role": row["role"]} if content is None else {"role": row["role"], "content": content}
    out: dict[str, Any] = {"role": row["role"]}
    if content is not None:
        out["content"] = content
    if tool_calls is not None:
        out["tool_calls"] = tool_calls
    if tool_call_id is not None:
        out["tool_call_id"] = tool_call_id
    if name is not None:
        out["name"] = name
    if refusal is not None:
        out["refusal"] = refusal
    return out


def repair(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-format messages rewritten to satisfy the guarantees in the module docstring.

    Returns new dicts (the input is not modified). `system` and `user` messages keep their place; only
    blank ones are dropped. Raises `ValueError` for a role other than system, user, assistant or tool.
    Applying it twice gives the same result as applying it once.
    """
    out: list[dict[str, Any]] = []
    # The assistant message still open: a later assistant message may merge into it and tool results answer it.
    # One without tool calls (most of them) stays a plain dict, sent as it is, until something merges into it.
    block: _ToolBlock | dict[str, Any] | None = None
    for raw in messages:
        role = raw.get("role")
        content = raw.get("content")
        message: dict[str, Any] | None
        if type(content) is str and len(raw) == 2 and role in _TEXT_ROLES and content and not content.isspace():
            # Most messages are only a role and a text: their clean copy is the same two keys.
            message = {"role": role, "content": content}
        else:
            message = _normalize(raw)
            if message is None:
                continue
            role = message["role"]
        if role == "tool":
            # Without an open block with calls there is no call this result could answer: an orphan.
            if isinstance(block, _ToolBlock):
                block.answer(message)
            continue
        if role == "assistant" and block is not None:
            if isinstance(block, dict):
                block = _ToolBlock(block)
            if not block.results:
                block.merge(message)
                continue
        if isinstance(block, _ToolBlock):
            block.close_into(out)
        elif block is not None:
            out.append(block)
        block = None
        if role == "assistant":
            block = _ToolBlock(message) if "tool_calls" in message else message
        else:
            out.append(message)
    if isinstance(block, _ToolBlock):
        block.close_into(out)
    elif block is not None:
        out.append(block)
    return out


def ui_text_of(message: Mapping[str, Any]) -> str:
    """The text of an AI SDK `UIMessage`: its `text` parts joined by blank lines.

    Other parts (files, reasoning, tool parts, `data-*`, `step-start`) are ignored. A message without text
    parts falls back to the older `content: str` form. Raises `ValueError` when the message is malformed or
    has no text that is not blank, so the endpoint can answer 400 instead of sending an empty prompt.
    """
    if not isinstance(message, Mapping):
        raise ValueError(f"a UI message must be an object, got {type(message).__name__}")
    parts = message.get("parts")
    if parts is not None and not isinstance(parts, list):
        raise ValueError(f"UI message `parts` must be a list, got {type(parts).__name__}")
    texts = [
        part["text"]
        for part in parts or ()
        if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
    ]
    text = "\n\n".join(t for t in texts if t.strip())
    if not text:
        content = message.get("content")
        text = content if isinstance(content, str) else ""
    if not text.strip():
        raise ValueError("the UI message has no text: expected a non-blank `text` part or `content` string")
    return text


class _ToolBlock:
    """An assistant message being assembled, and the results that answer its tool calls so far."""

    __slots__ = ("calls", "content", "message", "name", "results")

    def __init__(self, message: dict[str, Any]) -> None:
        self.message: dict[str, Any] | None = message
        """The normalized message this block started with, sent as it is unless another one is merged in."""
        self.content: str | None = message.get("content")
        self.name: str | None = message.get("name")
        calls = message.get("tool_calls")
        self.calls: dict[str, dict[str, Any]] = {call["id"]: call for call in calls} if calls else {}
        self.results: dict[str, dict[str, Any]] = {}
        """Accepted results by call id. Non-empty once the first result is seen; then the block can no
        longer absorb another assistant message."""

    def merge(self, message: Mapping[str, Any]) -> None:
        self.message = None
        content = message.get("content")
        if content is not None:
            self.content = content if self.content is None else f"{self.content}\n\n{content}"
        for call in message.get("tool_calls", ()):
            self.calls.setdefault(call["id"], call)

    def answer(self, result: dict[str, Any]) -> None:
        call_id = result["tool_call_id"]
        # A result for a call of another block, or a second result for a call, is dropped.
        if call_id in self.calls and call_id not in self.results:
            self.results[call_id] = result

    def close_into(self, out: list[dict[str, Any]]) -> None:
        assistant = self.message
        if assistant is None:
            assistant = {"role": "assistant"}
            if self.content is not None:
                assistant["content"] = self.content
            if self.name is not None:
                assistant["name"] = self.name
            if self.calls:
                assistant["tool_calls"] = list(self.calls.values())
        out.append(assistant)
        for call_id in self.calls:
            result = self.results.get(call_id)
            out.append(result or {"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED_RESULT})


def _normalize(message: Mapping[str, Any]) -> dict[str, Any] | None:
    """A clean copy of one message, or `None` when it has nothing to send."""
    role = message.get("role")
    if role not in _ROLES:
        raise ValueError(f"unknown chat message role {role!r}")
    content = message.get("content")
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            return None
        if not isinstance(content, str):
            content = _to_json(content)
        return {"role": "tool", "tool_call_id": call_id, "content": content}

    name = message.get("name")
    if role == "assistant":
        text = _text_of(content)
        if text is None:
            # Only a refusal: send it as text so the model sees what it said.
            text = _text_of(message.get("refusal"))
        raw_calls = message.get("tool_calls")
        calls = _tool_calls(raw_calls) if raw_calls else []
        if text is None and not calls:
            return None
        out: dict[str, Any] = {"role": role} if text is None else {"role": role, "content": text}
        if isinstance(name, str) and name:
            out["name"] = name
        if calls:
            out["tool_calls"] = calls
        return out
    if not _has_content(content):
        return None
    if isinstance(name, str) and name:
        return {"role": role, "content": content, "name": name}
    return {"role": role, "content": content}


def _demote_system(message: Mapping[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        content = STORED_SYSTEM_PREFIX + content if content.strip() else None
    elif isinstance(content, list) and _has_content(content):
        content = [{"type": "text", "text": STORED_SYSTEM_PREFIX.rstrip()}, *content]
    return {"role": "user", "content": content}


def _tool_calls(raw: object) -> list[dict[str, Any]]:
    """Well-formed copies of an assistant message's tool calls; the first call wins for a repeated id."""
    if not isinstance(raw, Sequence) or isinstance(raw, str):
        return []
    calls: dict[str, dict[str, Any]] = {}
    for call in raw:
        if not isinstance(call, Mapping):
            continue
        call_id = call.get("id")
        function = call.get("function")
        if not isinstance(call_id, str) or not call_id or call_id in calls or not isinstance(function, Mapping):
            continue
        name = function.get("name")
        if not isinstance(name, str) or not name:
            continue
        arguments = function.get("arguments")
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            arguments = "{}"
        elif not isinstance(arguments, str):
            arguments = _to_json(arguments)
        calls[call_id] = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    return list(calls.values())


def _text_of(content: object) -> str | None:
    """Assistant text: a string, or the text parts of a list joined; `None` when blank."""
    if type(content) is str:
        return content if content and not content.isspace() else None
    if isinstance(content, list):
        content = "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str)
        )
    if isinstance(content, str) and content.strip():
        return content
    return None


def _has_content(content: object) -> bool:
    """Whether user or system content says anything: non-blank text, or a list with a non-blank-text part."""
    if isinstance(content, str):
        return bool(content) and not content.isspace()
    if isinstance(content, list):
        return any(isinstance(part, Mapping) and not _is_blank_text_part(part) for part in content)
    return False


def _is_blank_text_part(part: Mapping[str, Any]) -> bool:
    text = part.get("text")
    return part.get("type") == "text" and not (isinstance(text, str) and text.strip())


def _to_json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)
