"""Decoding cached message rows: exact round trips."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from backend.store.cache import _decode_message, _encode
from backend.store.models import ChatMessage

SESSION = uuid4()


def message(sequence: int, content: str | None = "hello", **fields: object) -> ChatMessage:
    values: dict[str, object] = {
        "id": uuid4(),
        "session_id": SESSION,
        "sequence": sequence,
        "role": "user",
        "content": content,
        "tool_calls": None,
        "tool_call_id": None,
        "name": None,
        "refusal": None,
        "client_message_id": None,
        "token_count": 7,
        "created_at": datetime.now(UTC),
        **fields,
    }
    return ChatMessage(**values)  # type: ignore[arg-type]


def test_a_row_decodes_to_the_message_it_was_encoded_from() -> None:
    calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}]
    for m in (
        message(1),
        message(2, None, role="assistant", tool_calls=calls, refusal="no", name="bot"),
        message(3, "42", role="tool", tool_call_id="c1", client_message_id="client-1"),
    ):
        decoded = _decode_message(_encode(m))
        assert decoded == m
        assert type(decoded.id) is type(m.id) and decoded.created_at.tzinfo is not None
