"""Decoding cached message rows: exact round trips, and the bounded table of rows already decoded."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import uuid4

from backend.store.cache import _decode_message, _DecodedRows, _encode
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


def test_the_same_bytes_decode_once_and_changed_bytes_decode_again() -> None:
    m = message(1, "before")
    row = _encode(m)
    assert _decode_message(bytes(row)) is _decode_message(bytes(row))  # equal bytes, another object: a hit

    edited = message(1, "after", id=m.id, created_at=m.created_at)
    assert _decode_message(_encode(edited)).content == "after"
    assert _decode_message(row).content == "before"


def test_the_table_drops_its_oldest_rows_beyond_its_bounds() -> None:
    table = _DecodedRows(max_rows=2, max_bytes=1000, max_row_bytes=400)
    rows = [(_encode(message(i)), message(i)) for i in range(3)]
    for data, m in rows:
        table.put(data, m)
    assert table.get(rows[0][0]) is None
    assert table.get(rows[1][0]) is rows[1][1] and table.get(rows[2][0]) is rows[2][1]

    by_bytes = _DecodedRows(max_rows=100, max_bytes=len(rows[0][0]) * 2, max_row_bytes=400)
    for data, m in rows:
        by_bytes.put(data, m)
    assert [by_bytes.get(data) is not None for data, _ in rows] == [False, True, True]

    big = message(9, "x" * 500)
    table.put(_encode(big), big)
    assert table.get(_encode(big)) is None  # rows over max_row_bytes are decoded every time
