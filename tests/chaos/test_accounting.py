"""The chaos suite's accounting and client bookkeeping on made-up histories: each way a turn can be lost or
doubled is counted as such (a suite whose counters cannot fail would prove nothing)."""

from __future__ import annotations

from collections.abc import Mapping

import orjson

from tests.chaos.accounting import Row, account
from tests.chaos.driver import ClientView, TurnPlan
from tests.sse import Frame

PLAN = TurnPlan("u", "00000000-0000-0000-0000-000000000001", 0, "question", "a b c d")


def view(*chunks: Mapping[str, object], done: bool = True, start: int = 1) -> ClientView:
    v = ClientView(PLAN)
    for i, chunk in enumerate(chunks, start=start):
        v.take(Frame(f"0-{i}", orjson.dumps(chunk).decode()))
    if done:
        v.take(Frame(None, "[DONE]"))
    return v


def text(*deltas: str) -> list[Mapping[str, object]]:
    return [{"type": "text-delta", "id": "t", "delta": d} for d in deltas]


STOP = {"type": "finish", "finishReason": "stop"}
ERROR = [{"type": "error", "errorText": "boom"}, {"type": "finish", "finishReason": "error"}]


def rows(*pairs: tuple[str, str]) -> list[Row]:
    return [Row(role, content) for role, content in pairs]


def test_a_complete_reply_stored_once() -> None:
    turn = account(PLAN, [view(*text("a", " b c d"), STOP)], rows(("user", "question"), ("assistant", "a b c d")))
    assert turn.verdict == "stored once" and turn.reply == "a b c d"


def test_an_interrupted_partial_reply_is_stored_once() -> None:
    seen = view(*text("a", " b"), *ERROR)
    turn = account(PLAN, [seen], rows(("user", "question"), ("assistant", "a b\n\n[interrupted]")))
    assert turn.verdict == "stored once" and turn.reply == "a b"


def test_a_clear_error_before_any_text_needs_no_reply() -> None:
    assert account(PLAN, [view(*ERROR)], rows(("user", "question"))).verdict == "stored once"


def test_no_reply_after_text_was_shown_is_lost() -> None:
    turn = account(PLAN, [view(*text("a"), *ERROR)], rows(("user", "question")))
    assert turn.verdict == "lost" and "no reply" in turn.why


def test_a_missing_user_message_is_lost() -> None:
    assert account(PLAN, [view(*text("a"), STOP)], rows(("user", "other"))).verdict == "lost"


def test_a_reply_stored_after_the_next_user_message_does_not_count() -> None:
    history = rows(("user", "question"), ("user", "second"), ("assistant", "a b c d"))
    assert account(PLAN, [view(*text("a b c d"), STOP)], history).verdict == "lost"


def test_a_finished_reply_stored_short_is_lost() -> None:
    turn = account(PLAN, [view(*text("a b c d"), STOP)], rows(("user", "question"), ("assistant", "a b")))
    assert turn.verdict == "lost" and "complete" in turn.why


def test_a_user_message_stored_twice_is_duplicated() -> None:
    history = rows(("user", "question"), ("assistant", "a b c d"), ("user", "question"))
    assert account(PLAN, [view(*text("a b c d"), STOP)], history).verdict == "duplicated"


def test_two_replies_are_duplicated() -> None:
    history = rows(("user", "question"), ("assistant", "a b c d"), ("assistant", "a\n\n[interrupted]"))
    turn = account(PLAN, [view(*text("a b c d"), STOP)], history)
    assert turn.verdict == "duplicated" and "2 replies" in turn.why


def test_repeated_text_is_duplicated() -> None:
    stored = account(PLAN, [view(*text("a b"), *ERROR)], rows(("user", "question"), ("assistant", "a b a b")))
    assert stored.verdict == "duplicated"
    shown = account(PLAN, [view(*text("a b", "a b"), *ERROR)], rows(("user", "question"), ("assistant", "a b")))
    assert shown.verdict == "duplicated"


def test_a_frame_received_twice_or_two_finishes_are_duplicated() -> None:
    twice = view(*text("a"), done=False)
    twice.take(Frame("0-1", orjson.dumps(text("a")[0]).decode()))
    assert twice.repeated_frames == 1
    assert account(PLAN, [twice], rows(("user", "question"), ("assistant", "a"))).verdict == "duplicated"
    finishes = view(*text("a"), STOP, STOP)
    assert account(PLAN, [finishes], rows(("user", "question"), ("assistant", "a"))).verdict == "duplicated"


def test_tool_calls_left_running() -> None:
    started = {"type": "tool-input-start", "toolCallId": "c1", "toolName": "t"}
    assert view(started, *ERROR).open_tool_calls() == ["c1"]
    available = {"type": "tool-input-available", "toolCallId": "c1", "toolName": "t", "input": {}}
    assert view(started, available, *ERROR).open_tool_calls() == ["c1"]
    failed = {"type": "tool-input-error", "toolCallId": "c1", "toolName": "t", "input": "{", "errorText": "x"}
    assert view(started, failed, *ERROR).open_tool_calls() == []
    output = {"type": "tool-output-available", "toolCallId": "c1", "output": 1}
    assert view(started, available, output, STOP).open_tool_calls() == []


def test_what_ends_a_client_view() -> None:
    assert not view(*text("a"), done=False).finished  # the connection broke before `finish`: reconnect
    assert view(*text("a"), STOP, done=False).finished
    gone = view(*text("a"), done=False)
    gone.gone = True
    assert gone.finished
