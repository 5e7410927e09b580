"""Stored messages as AG-UI messages and the comparison of a client's history with them, without a server."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from backend.api.agui_history import agui_messages, conflicts
from backend.store.models import ChatMessage, Role

SESSION = uuid.uuid4()


def row(seq: int, role: Role, content: str | None = None, **extra: Any) -> ChatMessage:
    fields: dict[str, Any] = {
        "id": uuid.uuid4(),
        "session_id": SESSION,
        "sequence": seq,
        "role": role,
        "content": content,
        "tool_calls": None,
        "tool_call_id": None,
        "name": None,
        "refusal": None,
        "client_message_id": None,
        "token_count": 0,
        "created_at": datetime.now(UTC),
        **extra,
    }
    return ChatMessage(**fields)


CALL = {"id": "c1", "type": "function", "function": {"name": "calculate", "arguments": '{"expression": "6*7"}'}}
STORED = [
    row(1, "user", "what is 6*7?", client_message_id="u1"),
    row(2, "assistant", "", tool_calls=[CALL], reasoning="Six sevens"),
    row(3, "tool", json.dumps({"result": 42}), tool_call_id="c1"),
    row(4, "assistant", "It is 42[interrupted]"),
]


def snapshot() -> list[Any]:
    return agui_messages(STORED, lambda user: "msg-t1")


def test_stored_steps_get_the_ids_the_stream_gave_them() -> None:
    messages = [m.model_dump(by_alias=True) for m in snapshot()]
    assert [(m["role"], m["id"]) for m in messages] == [
        ("user", "u1"),
        ("reasoning", "msg-t1-0-reasoning-0"),
        ("assistant", "msg-t1-0"),
        ("tool", "result-c1"),
        ("assistant", "msg-t1-1"),
    ]
    assert messages[2]["toolCalls"][0]["function"]["name"] == "calculate" and "content" not in messages[2]
    assert messages[4]["content"] == "It is 42"  # the interrupted mark is storage's, not the conversation's


def test_a_history_that_says_the_same_agrees() -> None:
    client = [
        {"id": "x", "role": "user", "content": [{"type": "text", "text": "what is  6*7?"}]},
        {"id": "y", "role": "reasoning", "content": "whatever the client kept"},
        {"id": "z", "role": "assistant", "toolCalls": [CALL]},
        {"id": "w", "role": "tool", "toolCallId": "c1", "content": "42"},
        {"id": "v", "role": "system", "content": "the client's own instructions"},
        {"id": "u", "role": "assistant", "content": "It is 42"},
    ]
    assert not conflicts(client, snapshot())


def test_a_missing_edited_or_extra_message_contradicts() -> None:
    ours = [m.model_dump(by_alias=True) for m in snapshot()]
    assert conflicts(ours[:-1], snapshot())
    assert conflicts([*ours, {"id": "n", "role": "assistant", "content": "more"}], snapshot())
    edited = [dict(m) for m in ours]
    edited[0]["content"] = "what is 7*7?"
    assert conflicts(edited, snapshot())
    assert conflicts([], snapshot()) and not conflicts([], [])
