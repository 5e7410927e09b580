import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from itertools import count
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.chat.messages import (
    INTERRUPTED_RESULT,
    STORED_SYSTEM_PREFIX,
    repair,
    stored_to_openai,
    to_openai_messages,
    ui_text_of,
)
from backend.store.models import ChatMessage, Role

SESSION_ID = uuid4()
_sequence = count(1)


def row(
    role: Role,
    content: str | None = None,
    *,
    tool_calls: list[dict[str, Any]] | None = None,
    tool_call_id: str | None = None,
    name: str | None = None,
    refusal: str | None = None,
) -> ChatMessage:
    return ChatMessage(
        id=uuid4(),
        session_id=SESSION_ID,
        sequence=next(_sequence),
        role=role,
        content=content,
        tool_calls=tool_calls,
        tool_call_id=tool_call_id,
        name=name,
        refusal=refusal,
        client_message_id=None,
        token_count=0,
        created_at=datetime.now(UTC),
    )


def call(call_id: str, name: str = "get_weather", arguments: str = '{"city": "Paris"}') -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def result(call_id: str, content: str = "ok") -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": content}


def synthetic(call_id: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": INTERRUPTED_RESULT}


USER: dict[str, Any] = {"role": "user", "content": "hi"}


# --- plain conversations and placement -------------------------------------------------------------------


def test_plain_conversation_from_stored_rows() -> None:
    history = [row("user", "hello"), row("assistant", "hi there"), row("user", "how are you?")]

    assert to_openai_messages(history) == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi there"},
        {"role": "user", "content": "how are you?"},
    ]


def test_system_prompt_first_then_context_then_history() -> None:
    summary = {"role": "user", "content": "[Summary of earlier messages] the user likes tea"}
    history = [row("user", "and coffee?"), row("assistant", "also fine")]

    messages = to_openai_messages(history, system_prompt="You are helpful.", context=[summary])

    assert messages == [
        {"role": "system", "content": "You are helpful."},
        summary,
        {"role": "user", "content": "and coffee?"},
        {"role": "assistant", "content": "also fine"},
    ]


def test_blank_system_prompt_is_left_out() -> None:
    assert to_openai_messages([row("user", "x")], system_prompt="  ") == [{"role": "user", "content": "x"}]


def test_stored_system_message_becomes_prefixed_user_message() -> None:
    history = [row("system", "old prompt"), row("user", "hi"), row("system", "   ")]

    messages = to_openai_messages(history, system_prompt="new prompt")

    assert messages == [
        {"role": "system", "content": "new prompt"},
        {"role": "user", "content": STORED_SYSTEM_PREFIX + "old prompt"},
        {"role": "user", "content": "hi"},
    ]


def test_context_system_message_keeps_its_role() -> None:
    context = [{"role": "system", "content": "caller's note"}]

    assert to_openai_messages([], context=context) == [{"role": "system", "content": "caller's note"}]


def test_history_accepts_plain_dicts_and_rows_mixed() -> None:
    history: list[ChatMessage | Mapping[str, Any]] = [USER, row("assistant", "hey")]

    assert to_openai_messages(history) == [USER, {"role": "assistant", "content": "hey"}]


def test_stored_to_openai_is_faithful_and_omits_none() -> None:
    assert stored_to_openai(row("assistant", refusal="no")) == {"role": "assistant", "refusal": "no"}
    assert stored_to_openai(row("tool", "42", tool_call_id="c1")) == {
        "role": "tool",
        "content": "42",
        "tool_call_id": "c1",
    }


def test_input_is_not_modified() -> None:
    assistant = {"role": "assistant", "content": "a", "tool_calls": [call("c1")], "refusal": None}
    messages: list[dict[str, Any]] = [USER, assistant, {"role": "assistant", "content": "b"}]
    snapshot = json.dumps(messages)

    repair(messages)

    assert json.dumps(messages) == snapshot


def test_the_output_shares_no_message_dict_with_the_input() -> None:
    # Plain text messages take a short path; their copies must still be new dicts.
    history: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "b", "name": "bob"},
        {"role": "assistant", "content": "c", "tool_calls": [call("c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    out = repair(history)
    assert out == [
        USER,
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "b", "name": "bob"},
        {"role": "assistant", "content": "c", "tool_calls": [call("c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    assert not {id(m) for m in out} & {id(m) for m in history}


# --- merging split assistant messages --------------------------------------------------------------------


def test_merge_text_and_text() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "content": "one"},
        {"role": "assistant", "content": "two"},
    ]

    assert repair(messages) == [USER, {"role": "assistant", "content": "one\n\ntwo"}]


def test_merge_text_and_tool_calls() -> None:
    # The reference system's bug: a step saved as a text row and a tool-call row (PR #12062).
    history = [
        row("user", "weather?"),
        row("assistant", "Let me check."),
        row("assistant", tool_calls=[call("c1")]),
        row("tool", "sunny", tool_call_id="c1"),
        row("assistant", "It is sunny."),
    ]

    assert to_openai_messages(history) == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call("c1")]},
        result("c1", "sunny"),
        {"role": "assistant", "content": "It is sunny."},
    ]


def test_merge_tool_calls_and_tool_calls_results_follow_the_merged_message() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "content": None, "tool_calls": [call("a")]},
        {"role": "assistant", "content": None, "tool_calls": [call("b", "search")]},
        result("b", "B"),
        result("a", "A"),
    ]

    assert repair(messages) == [
        USER,
        {"role": "assistant", "tool_calls": [call("a"), call("b", "search")]},
        result("a", "A"),
        result("b", "B"),
    ]


def test_assistant_after_answered_tool_calls_is_not_merged() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "tool_calls": [call("a")]},
        result("a"),
        {"role": "assistant", "content": "done"},
    ]

    assert repair(messages) == [*messages[:3], {"role": "assistant", "content": "done"}]


def test_assistants_separated_only_by_dropped_messages_are_merged() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "content": "one"},
        result("stray"),
        {"role": "assistant", "content": ""},
        {"role": "assistant", "content": "two"},
    ]

    assert repair(messages) == [USER, {"role": "assistant", "content": "one\n\ntwo"}]


def test_merge_keeps_first_of_duplicate_call_ids_and_answers_once() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "tool_calls": [call("a")]},
        {"role": "assistant", "tool_calls": [call("a", "other"), call("b")]},
        result("a", "first"),
        result("a", "second"),
    ]

    assert repair(messages) == [
        USER,
        {"role": "assistant", "tool_calls": [call("a"), call("b")]},
        result("a", "first"),
        synthetic("b"),
    ]


# --- tool results ----------------------------------------------------------------------------------------


def test_orphan_tool_message_at_start_is_dropped() -> None:
    assert repair([result("x"), USER]) == [USER]


def test_orphan_tool_message_in_the_middle_is_dropped() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "tool_calls": [call("a")]},
        result("a"),
        result("zzz"),
        {"role": "assistant", "content": "done"},
    ]

    assert repair(messages) == [messages[0], messages[1], messages[2], messages[4]]


def test_tool_message_after_a_user_message_is_an_orphan() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "tool_calls": [call("a")]},
        {"role": "user", "content": "stop"},
        result("a", "late"),
    ]

    assert repair(messages) == [messages[0], messages[1], synthetic("a"), messages[2]]


def test_result_for_a_call_of_an_earlier_block_is_dropped() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "tool_calls": [call("a")]},
        result("a"),
        {"role": "assistant", "tool_calls": [call("b")]},
        result("a", "again"),
        result("b"),
    ]

    assert repair(messages) == [messages[0], messages[1], messages[2], messages[3], messages[5]]


def test_results_out_of_order_follow_the_call_order() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "tool_calls": [call("a"), call("b"), call("c")]},
        result("c", "C"),
        result("a", "A"),
        result("b", "B"),
    ]

    assert repair(messages)[2:] == [result("a", "A"), result("b", "B"), result("c", "C")]


def test_missing_result_gets_a_synthetic_one() -> None:
    history = [
        row("user", "do two things"),
        row("assistant", tool_calls=[call("a"), call("b")]),
        row("tool", "A", tool_call_id="a"),
    ]

    messages = to_openai_messages(history)

    assert messages[2:] == [result("a", "A"), synthetic("b")]
    assert json.loads(messages[3]["content"]) == {"error": "no result recorded (interrupted)"}


def test_missing_result_at_the_end_of_history() -> None:
    messages: list[dict[str, Any]] = [USER, {"role": "assistant", "content": "checking", "tool_calls": [call("a")]}]

    assert repair(messages) == [*messages, synthetic("a")]


def test_duplicate_result_is_dropped() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "tool_calls": [call("a")]},
        result("a", "1"),
        result("a", "2"),
    ]

    assert repair(messages) == messages[:3]


def test_duplicate_tool_call_id_within_a_message_keeps_the_first() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "tool_calls": [call("a"), call("a", "other")]},
        result("a"),
    ]

    assert repair(messages) == [USER, {"role": "assistant", "tool_calls": [call("a")]}, result("a")]


def test_tool_content_is_always_a_string() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "tool_calls": [call("a"), call("b")]},
        {"role": "tool", "tool_call_id": "a", "content": {"temp": 21, "unit": "°C"}},
        {"role": "tool", "tool_call_id": "b", "content": None, "name": "get_weather"},
    ]

    assert repair(messages)[2:] == [
        {"role": "tool", "tool_call_id": "a", "content": '{"temp": 21, "unit": "°C"}'},
        {"role": "tool", "tool_call_id": "b", "content": "null"},
    ]


def test_malformed_tool_calls_are_dropped_and_arguments_normalised() -> None:
    calls: list[Any] = [
        {"id": "", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "no-name", "type": "function", "function": {"arguments": "{}"}},
        "garbage",
        {"id": "blank-args", "function": {"name": "f", "arguments": "  "}},
        {"id": "dict-args", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}},
    ]

    messages = repair([USER, {"role": "assistant", "tool_calls": calls}])

    assert messages[1] == {
        "role": "assistant",
        "tool_calls": [call("blank-args", "f", "{}"), call("dict-args", "f", '{"x": 1}')],
    }
    assert messages[2:] == [synthetic("blank-args"), synthetic("dict-args")]


# --- empty messages and fields ---------------------------------------------------------------------------


def test_empty_assistant_is_dropped() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "content": "  "},
        {"role": "assistant", "tool_calls": []},
    ]

    assert repair(messages) == [USER]


def test_blank_text_next_to_tool_calls_is_left_out() -> None:
    messages: list[dict[str, Any]] = [
        USER,
        {"role": "assistant", "content": "", "tool_calls": [call("a")]},
        result("a"),
    ]

    assert repair(messages)[1] == {"role": "assistant", "tool_calls": [call("a")]}


def test_blank_user_messages_are_dropped() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": ""},
        {"role": "user", "content": " \n"},
        {"role": "user", "content": None},
        {"role": "user", "content": []},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]},
    ]

    assert repair(messages) == [messages[4]]


def test_refusal_is_never_sent_but_a_refusal_only_message_keeps_its_text() -> None:
    history = [
        row("user", "do bad things"),
        row("assistant", refusal="I can't help with that."),
        row("user", "ok"),
        row("assistant", "Sure.", refusal="ignored"),
    ]

    assert to_openai_messages(history)[1::2] == [
        {"role": "assistant", "content": "I can't help with that."},
        {"role": "assistant", "content": "Sure."},
    ]


def test_name_is_kept_only_when_set_and_never_on_tool_messages() -> None:
    history = [
        row("user", "hi", name="alice"),
        row("assistant", tool_calls=[call("a")], name=None),
        row("tool", "x", tool_call_id="a", name="get_weather"),
    ]

    assert to_openai_messages(history) == [
        {"role": "user", "content": "hi", "name": "alice"},
        {"role": "assistant", "tool_calls": [call("a")]},
        result("a", "x"),
    ]


def test_unknown_role_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown chat message role 'function'"):
        repair([{"role": "function", "content": "x"}])


# --- property: any corrupted history comes out valid -----------------------------------------------------

CALL_IDS = ["a", "b", "c", "d"]
TEXTS = st.sampled_from([None, "", "  ", "text", "more text"])

tool_calls_strategy = st.lists(
    st.builds(call, st.sampled_from(CALL_IDS), st.sampled_from(["f", "g"]), st.sampled_from(["{}", "", '{"x":1}'])),
    max_size=4,
)
assistant_strategy = st.builds(
    lambda content, calls, refusal: row("assistant", content, tool_calls=calls or None, refusal=refusal),
    TEXTS,
    tool_calls_strategy,
    st.sampled_from([None, None, "no"]),
)
tool_strategy = st.builds(
    lambda call_id, content: row("tool", content, tool_call_id=call_id),
    st.sampled_from([*CALL_IDS, "orphan", None]),
    TEXTS,
)
message_strategy = st.one_of(
    st.builds(lambda content: row("user", content), TEXTS),
    st.builds(lambda content: row("system", content), TEXTS),
    assistant_strategy,
    tool_strategy,
    tool_strategy,
)


def _assert_valid(messages: Sequence[Mapping[str, Any]]) -> None:
    pending: list[str] = []  # calls of the current block not yet answered, in call order
    previous_role: str | None = None
    for message in messages:
        assert all(value is not None for value in message.values()), message
        role = message["role"]
        if role == "tool":
            # (1) a result answers the next unanswered call of the block it follows; (2) exactly once.
            assert pending, f"tool message without a pending call: {message}"
            assert message["tool_call_id"] == pending.pop(0)
            assert isinstance(message["content"], str)
            assert set(message) == {"role", "tool_call_id", "content"}
        else:
            assert not pending, f"{role} message before calls {pending} were answered"
        if role == "assistant":
            # (3) no adjacent assistants.
            assert previous_role != "assistant"
            assert "refusal" not in message
            assert message.get("content") or message.get("tool_calls")
            ids = [c["id"] for c in message.get("tool_calls", ())]
            assert len(ids) == len(set(ids))
            pending = ids
        previous_role = role
    assert not pending, f"calls {pending} never answered"


@settings(max_examples=400, deadline=None)
@given(st.lists(message_strategy, max_size=25), st.sampled_from([None, "prompt"]))
def test_any_corrupted_history_comes_out_valid(history: list[ChatMessage], system_prompt: str | None) -> None:
    messages = to_openai_messages(history, system_prompt=system_prompt)

    _assert_valid(messages)
    assert [m["role"] for m in messages].count("system") == (1 if system_prompt else 0)
    assert repair(messages[1:] if system_prompt else messages) == (messages[1:] if system_prompt else messages)
    # User messages are never lost or reordered.
    kept = [m["content"] for m in messages if m["role"] == "user" and not m["content"].startswith(STORED_SYSTEM_PREFIX)]
    assert kept == [m.content for m in history if m.role == "user" and m.content and m.content.strip()]


# --- ui_text_of ------------------------------------------------------------------------------------------


def test_ui_text_of_joins_text_parts_and_ignores_others() -> None:
    message = {
        "id": "m1",
        "role": "user",
        "parts": [
            {"type": "step-start"},
            {"type": "text", "text": "first"},
            {"type": "file", "mediaType": "image/png", "url": "data:,"},
            {"type": "text", "text": "  "},
            {"type": "text", "text": "second"},
        ],
    }

    assert ui_text_of(message) == "first\n\nsecond"


def test_ui_text_of_older_content_form() -> None:
    assert ui_text_of({"id": "m1", "role": "user", "content": "hello"}) == "hello"
    assert ui_text_of({"role": "user", "content": "hello", "parts": []}) == "hello"


def test_ui_text_of_keeps_the_text_as_written() -> None:
    assert ui_text_of({"role": "user", "parts": [{"type": "text", "text": "  indented\n"}]}) == "  indented\n"


@pytest.mark.parametrize(
    "message",
    [
        {"id": "m1", "role": "user", "parts": []},
        {"id": "m1", "role": "user", "parts": [{"type": "text", "text": " \n"}]},
        {"id": "m1", "role": "user", "parts": [{"type": "file", "url": "data:,"}]},
        {"id": "m1", "role": "user", "parts": [{"type": "text", "text": None}]},
        {"id": "m1", "role": "user", "content": ""},
        {"id": "m1", "role": "user"},
    ],
)
def test_ui_text_of_rejects_messages_without_text(message: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="no text"):
        ui_text_of(message)


@pytest.mark.parametrize("message", [{"role": "user", "parts": "hello"}, "hello"])
def test_ui_text_of_rejects_malformed_messages(message: Any) -> None:
    with pytest.raises(ValueError, match="must be"):
        ui_text_of(message)
