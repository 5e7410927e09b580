"""Fitting a conversation into the model's window: `chat/context_budget.py`, `ContextWindow.prompt` and the summariser's
input. Examples first, then property tests that live through whole random sessions with tool calls. No database:
a small in-memory store keeps the rows and the summary state the way Postgres does."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.chat.compaction import SUMMARY_INSTRUCTION, Compactor
from backend.chat.context_budget import ContextBudget, choose_cut, trim_to_fit, turn_starts
from backend.chat.context_window import Calibration, ContextPolicy, ContextWindow, _shorten
from backend.chat.messages import INTERRUPTED_RESULT, stored_to_openai
from backend.chat.tokens import REPLY_PRIMING_TOKENS, TokenCounter
from backend.store.models import ChatMessage

COUNTER = TokenCounter("gpt-4o")
SYSTEM = "You are a helpful copilot."
SUMMARY_WRAPPER = COUNTER.count_message(
    {"role": "user", "content": "<conversation_summary>\n\n</conversation_summary>"}
)
"""Tokens of the summary message besides the summary itself, which `summary_tokens` does not count."""


def shorten(message: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    return _shorten(message, max_tokens, COUNTER)


def words(n: int) -> str:
    """A text of exactly `n` tokens."""
    return " x" * n


# --- choose_cut: examples ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Msg:
    sequence: int
    role: str
    token_count: int


def msgs(spec: str, first: int = 1) -> list[Msg]:
    """`"u10 a5 t7"`: a user message of 10 tokens, an assistant of 5, a tool result of 7; sequences from `first`."""
    roles = {"u": "user", "a": "assistant", "t": "tool", "s": "system"}
    return [Msg(first + i, roles[w[0]], int(w[1:])) for i, w in enumerate(spec.split())]


FOUR_TURNS = "u40 a20 t30 a10  u50 a50  u60 a10 t20 a10  u100"  # turns of 100 tokens; the last is the current one


@pytest.mark.parametrize("spec", ["", "u10", "u10 a10", "u10 a10 t10 a10 t5 a7", "a5 t5"])
def test_nothing_to_fold_without_a_user_message_after_the_first(spec: str) -> None:
    assert choose_cut(msgs(spec), keep_tokens=0, max_fold_tokens=10**6) is None


def test_the_cut_lands_right_before_a_user_message() -> None:
    messages = msgs(FOUR_TURNS, first=41)
    for keep in range(0, 400, 7):
        through = choose_cut(messages, keep_tokens=keep, max_fold_tokens=10**6)
        assert through is not None
        after = next(m for m in messages if m.sequence == through + 1)
        assert after.role == "user"
        assert through < messages[-1].sequence  # the newest user message is never folded


def test_folds_the_fewest_turns_that_leave_at_most_keep_tokens() -> None:
    messages = msgs(FOUR_TURNS)
    # 400 live: one turn folded leaves 300, two leave 200, three leave 100 (the current turn).
    assert choose_cut(messages, keep_tokens=300, max_fold_tokens=10**6) == 4
    assert choose_cut(messages, keep_tokens=299, max_fold_tokens=10**6) == 6
    assert choose_cut(messages, keep_tokens=200, max_fold_tokens=10**6) == 6
    assert choose_cut(messages, keep_tokens=150, max_fold_tokens=10**6) == 10


def test_never_folds_the_newest_turn_even_when_it_alone_is_over_keep_tokens() -> None:
    messages = msgs("u10 a10 u500 a500 t500 a500")
    assert choose_cut(messages, keep_tokens=0, max_fold_tokens=10**6) == 2


def test_a_leading_prefix_without_user_message_folds_with_the_first_turn_boundary() -> None:
    assert choose_cut(msgs("s30 u10 a10"), keep_tokens=0, max_fold_tokens=10**6) == 1


def test_respects_max_fold_tokens() -> None:
    messages = msgs(FOUR_TURNS)
    assert choose_cut(messages, keep_tokens=0, max_fold_tokens=250) == 6  # 200 folded; 300 would be over
    assert choose_cut(messages, keep_tokens=0, max_fold_tokens=200) == 6  # exactly at the bound is fine
    assert choose_cut(messages, keep_tokens=0, max_fold_tokens=199) == 4


def test_an_oldest_turn_over_max_fold_tokens_is_still_folded_whole_and_alone() -> None:
    messages = msgs("u100 a100 t300 a100  u10 a10  u10")
    assert choose_cut(messages, keep_tokens=0, max_fold_tokens=250) == 4


cut_messages = st.lists(
    st.tuples(st.sampled_from(["user", "assistant", "tool"]), st.integers(1, 5000)), max_size=30
).map(lambda rows: [Msg(i + 1, role, n) for i, (role, n) in enumerate(rows)])


def test_keep_messages_folds_the_fewest_turns_that_leave_at_most_that_many() -> None:
    messages = msgs(FOUR_TURNS)  # 11 messages in turns of 4, 2, 4 and 1
    assert choose_cut(messages, keep_tokens=10**6, max_fold_tokens=10**6, keep_messages=7) == 4
    assert choose_cut(messages, keep_tokens=10**6, max_fold_tokens=10**6, keep_messages=6) == 6
    assert choose_cut(messages, keep_tokens=10**6, max_fold_tokens=10**6, keep_messages=5) == 6
    assert choose_cut(messages, keep_tokens=10**6, max_fold_tokens=10**6, keep_messages=0) == 10
    # Both bounds hold: the tighter one decides.
    assert choose_cut(messages, keep_tokens=150, max_fold_tokens=10**6, keep_messages=7) == 10
    assert choose_cut(messages, keep_tokens=300, max_fold_tokens=10**6, keep_messages=5) == 6
    # The summariser's bound still caps one fold.
    assert choose_cut(messages, keep_tokens=10**6, max_fold_tokens=150, keep_messages=0) == 4


@settings(max_examples=1000, deadline=None)
@given(cut_messages, st.integers(0, 60_000), st.integers(0, 40_000), st.none() | st.integers(0, 30))
def test_choose_cut_is_the_smallest_allowed_fold_that_reaches_keep_tokens(
    messages: list[Msg], keep: int, max_fold: int, keep_messages: int | None
) -> None:
    boundaries = [i for i in turn_starts(messages) if i > 0]
    through = choose_cut(messages, keep_tokens=keep, max_fold_tokens=max_fold, keep_messages=keep_messages)
    if not boundaries:
        assert through is None
        return
    assert through is not None
    cut = through  # sequences are index + 1: folding through `through` folds messages[:cut]
    assert cut in boundaries
    total = sum(m.token_count for m in messages)

    def folded(b: int) -> int:
        return sum(m.token_count for m in messages[:b])

    def reaches(b: int) -> bool:
        return total - folded(b) <= keep and (keep_messages is None or len(messages) - b <= keep_messages)

    assert folded(cut) <= max_fold or cut == boundaries[0]
    # Folding less would not have left at most `keep` tokens and `keep_messages` messages live.
    assert not any(reaches(b) for b in boundaries if b < cut)
    # Folding more was needed only if the next boundary is over the summariser's bound (or there is none).
    if not reaches(cut):
        later = [b for b in boundaries if b > cut]
        assert not later or folded(later[0]) > max_fold


# --- trim_to_fit ---------------------------------------------------------------------------------------------


def call(call_id: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": "lookup", "arguments": json.dumps({"q": call_id})}}


def user(n: int) -> dict[str, Any]:
    return {"role": "user", "content": words(n)}


def answer(n: int) -> dict[str, Any]:
    return {"role": "assistant", "content": words(n)}


def calling(*ids: str) -> dict[str, Any]:
    return {"role": "assistant", "tool_calls": [call(i) for i in ids]}


def result(call_id: str, n: int) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "content": words(n)}


def counted(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[int]]:
    return messages, [COUNTER.count_message(m) for m in messages]


THREE_TURNS = [
    user(100), calling("a"), result("a", 400), answer(50),
    user(100), answer(100),
    user(20), calling("b", "c"), result("b", 900), result("c", 300), answer(10),
]  # fmt: skip


def test_trim_keeps_everything_that_fits() -> None:
    messages, counts = counted(THREE_TURNS)
    assert trim_to_fit(messages, counts, sum(counts), shorten=shorten) == messages


def test_trim_drops_whole_oldest_turns_first() -> None:
    messages, counts = counted(THREE_TURNS)
    assert trim_to_fit(messages, counts, sum(counts) - 1, shorten=shorten) == messages[4:]
    assert trim_to_fit(messages, counts, sum(counts[4:]), shorten=shorten) == messages[4:]
    assert trim_to_fit(messages, counts, sum(counts[4:]) - 1, shorten=shorten) == messages[6:]
    assert trim_to_fit(messages, counts, sum(counts[6:]), shorten=shorten) == messages[6:]


def test_trim_shortens_the_biggest_tool_outputs_of_the_newest_turn_only_when_needed() -> None:
    messages, counts = counted(THREE_TURNS)
    newest = sum(counts[6:])
    kept = trim_to_fit(messages, counts, newest - 100, shorten=shorten)
    assert kept is not None
    assert [m["role"] for m in kept] == [m["role"] for m in messages[6:]]
    assert kept[0] == messages[6] and kept[1] == messages[7] and kept[4] == messages[10]
    assert kept[3] == messages[9]  # the smaller output is left alone: the bigger one was enough
    assert "tokens omitted" in kept[2]["content"]
    assert sum(COUNTER.count_message(m) for m in kept) <= newest - 100
    # Needing more than the biggest output can give shortens the next one too.
    kept = trim_to_fit(messages, counts, newest - 1000, shorten=shorten)
    assert kept is not None
    assert "tokens omitted" in kept[2]["content"] and "tokens omitted" in kept[3]["content"]
    assert sum(COUNTER.count_message(m) for m in kept) <= newest - 1000


def test_trim_gives_up_when_the_newest_turn_cannot_fit() -> None:
    messages, counts = counted(THREE_TURNS)
    # Tool outputs shrink to 32 tokens at the least; the rest of the newest turn is not touched.
    assert trim_to_fit(messages, counts, 20, shorten=shorten) is None
    assert trim_to_fit(messages, counts, -1, shorten=shorten) is None
    no_tools, no_tool_counts = counted([user(10), user(500), answer(500)])
    assert trim_to_fit(no_tools, no_tool_counts, sum(no_tool_counts[1:]) - 1, shorten=shorten) is None


# --- ContextBudget, Calibration, ContextPolicy ----------------------------------------------------------------


def test_budget_limit_and_pressure_thresholds() -> None:
    budget = ContextBudget(window=11_000, reserved_output=1_000, margin=0.0)
    assert budget.limit == 10_000
    assert budget.pressure(0) == "ok"
    assert budget.pressure(6_000) == "ok"
    assert budget.pressure(6_001) == "soft"
    assert budget.pressure(8_500) == "soft"
    assert budget.pressure(8_500.5) == "hard"
    assert budget.pressure(50_000) == "hard"
    assert ContextBudget(window=11_000, reserved_output=1_000).limit == 9_500
    assert ContextBudget(window=1_000, reserved_output=2_000).limit == 0


def test_many_live_messages_are_soft_pressure_only() -> None:
    budget = ContextBudget(window=11_000, reserved_output=1_000, margin=0.0, max_live_messages=400)
    assert budget.keep_messages == 200
    assert budget.pressure(100, live_messages=400) == "ok"
    assert budget.pressure(100, live_messages=401) == "soft"
    assert budget.pressure(8_501, live_messages=401) == "hard"  # tokens decide when the model is at risk
    unbounded = ContextBudget(window=11_000, reserved_output=1_000, margin=0.0)
    assert unbounded.keep_messages is None and unbounded.pressure(100, live_messages=10**6) == "ok"
    assert ContextBudget(window=11_000, reserved_output=1_000, max_live_messages=1).keep_messages == 1


def test_calibration_converges_to_the_reported_ratio_within_bounds() -> None:
    calibration = Calibration()
    assert calibration.ratio == 1.0
    for _ in range(60):
        calibration.observe(1_000, 1_300)
    assert calibration.ratio == pytest.approx(1.3, abs=1e-3)
    for _ in range(60):
        calibration.observe(1_000, 800)
    assert calibration.ratio == pytest.approx(0.8, abs=1e-3)


@pytest.mark.parametrize(("reported", "bound"), [(100_000, 2.0), (1, 0.5)])
def test_calibration_is_clamped(reported: int, bound: float) -> None:
    calibration = Calibration()
    for _ in range(200):
        calibration.observe(1_000, reported)
        assert 0.5 <= calibration.ratio <= 2.0
    assert calibration.ratio == pytest.approx(bound, abs=1e-6)


@pytest.mark.parametrize(("estimated", "reported"), [(0, 500), (500, 0), (-3, 5)])
def test_calibration_ignores_empty_samples(estimated: int, reported: int) -> None:
    calibration = Calibration()
    calibration.observe(estimated, reported)
    assert calibration.ratio == 1.0


def test_policy_scales_the_estimate_by_the_calibration() -> None:
    budget = ContextBudget(window=11_000, reserved_output=1_000, margin=0.0)
    calibration = Calibration()
    policy = ContextPolicy(budget, calibration)
    assert policy.keep_tokens == 3_500
    assert policy.pressure(8_000) == "soft"
    calibration.ratio = 1.1
    assert policy.pressure(8_000) == "hard"
    calibration.ratio = 0.7
    assert policy.pressure(8_000) == "ok"


# --- whole sessions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    text: int
    """Tokens of the text beside the calls (0: none)."""
    results: tuple[int, ...]
    """Tokens of each call's result, in call order."""


@dataclass(frozen=True)
class Turn:
    user: int
    steps: tuple[Step, ...]
    answer: int


sizes = st.one_of(st.integers(1, 300), st.integers(1, 5000))
steps = st.builds(Step, st.one_of(st.just(0), sizes), st.lists(sizes, min_size=1, max_size=3).map(tuple))
turns = st.builds(Turn, sizes, st.lists(steps, max_size=4).map(tuple), sizes)


@dataclass(frozen=True)
class Config:
    budget: ContextBudget
    ratio: float
    fixed: int
    """Tokens of the system prompt, tool schemas and page context."""
    max_fold: int
    """`summary_max_input_tokens`."""
    max_summary: int


configs = st.builds(
    Config,
    st.builds(
        ContextBudget,
        window=st.integers(3_000, 60_000),
        reserved_output=st.sampled_from([200, 1_000]),
        max_live_messages=st.sampled_from([0, 0, 8, 30]),
    ),
    st.sampled_from([0.8, 1.0, 1.25]),
    st.integers(0, 600),
    st.sampled_from([256, 1_500, 4_000, 16_000]),
    st.sampled_from([64, 300, 1_024]),
)


SESSION_ID = uuid4()
SEEN = ("prompts", "compactions", "dropped turns", "shortened outputs", "gave up")


CONFIG = Config(ContextBudget(10**6, 0), 1.0, 0, 16_000, 1_024)
"""For tests that only use a `Session` as a store."""


def compactor(max_input: int, max_summary: int) -> Compactor:
    # Only `summariser_messages` is called: no model, store or Redis is needed.
    unused: Any = None
    return Compactor(
        llm=unused,
        store=unused,
        redis=SimpleNamespace(register_script=lambda script: None),  # type: ignore[arg-type]
        counter=COUNTER,
        model=None,
        max_input_tokens=max_input,
        max_summary_tokens=max_summary,
        timeout_seconds=1,
    )


def summariser_overhead(previous: str | None, max_summary: int) -> int:
    """Tokens of a summariser request with an empty transcript."""
    max_words = max(50, int(max_summary * 0.7))
    return COUNTER.count_messages(
        [
            {"role": "system", "content": SUMMARY_INSTRUCTION.format(max_words=max_words)},
            {
                "role": "user",
                "content": f"<previous_summary>\n{previous or '(none yet)'}\n</previous_summary>\n\n"
                "<new_messages>\n\n</new_messages>",
            },
        ]
    )


@dataclass
class Session:
    """The rows and summary state of one session, as the Postgres store keeps them."""

    config: Config
    rows: list[ChatMessage] = field(default_factory=list)
    summary: str | None = None
    summary_tokens: int = 0
    summary_through: int = 0
    live_tokens: int = 0
    """Maintained incrementally, as `append_messages` and `commit_summary` do."""
    folded: set[int] = field(default_factory=set)
    seen: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SEEN, 0))
    """What happened, to check that the generated sessions exercise every path."""

    def append(self, *messages: dict[str, Any]) -> list[ChatMessage]:
        stored = []
        for m in messages:
            row = ChatMessage(
                id=uuid4(),
                session_id=SESSION_ID,
                sequence=len(self.rows) + 1,
                role=m["role"],
                content=m.get("content"),
                tool_calls=m.get("tool_calls"),
                tool_call_id=m.get("tool_call_id"),
                name=None,
                refusal=None,
                client_message_id=None,
                token_count=COUNTER.count_message(m),
                created_at=datetime.now(UTC),
            )
            self.rows.append(row)
            stored.append(row)
        self.live_tokens += sum(m.token_count for m in stored)
        return stored

    def live(self) -> list[ChatMessage]:
        return [m for m in self.rows if m.sequence > self.summary_through]

    def load(self) -> ContextWindow:
        window = ContextWindow(SESSION_ID, self.summary, self.summary_tokens, self.summary_through)
        window.extend(self.live())
        return window

    def compact(self, keep_tokens: int, keep_messages: int | None = None) -> bool:
        """`Compactor.compact` with a summariser that writes min(previous + folded, max_summary) tokens."""
        live = self.live()
        through = choose_cut(
            live, keep_tokens=keep_tokens, max_fold_tokens=self.config.max_fold, keep_messages=keep_messages
        )
        if through is None:
            return False
        span = [m for m in live if m.sequence <= through]
        span_tokens = sum(m.token_count for m in span)
        # (d) Each fold starts right after the previous one, and no message is folded twice.
        assert through > self.summary_through
        assert [m.sequence for m in span] == list(range(self.summary_through + 1, through + 1))
        assert self.folded.isdisjoint(m.sequence for m in span)
        self.folded.update(m.sequence for m in span)
        # (e) The summariser reads at most max_fold tokens of conversation, unless the span is one turn.
        assert span_tokens <= self.config.max_fold or len(turn_starts(span)) <= 1
        request = compactor(self.config.max_fold, self.config.max_summary).summariser_messages(self.summary, span)
        transcript = request[1]["content"]
        for m in span:
            assert f"[{m.role}]" in transcript
        overhead = summariser_overhead(self.summary, self.config.max_summary)
        assert COUNTER.count_messages(request) <= overhead + self.config.max_fold + 16
        self.summary_tokens = min(self.summary_tokens + span_tokens, self.config.max_summary)
        self.summary = words(self.summary_tokens)
        self.live_tokens -= span_tokens
        self.summary_through = through
        self.seen["compactions"] += 1
        return True


def step_messages(turn_index: int, step_index: int, step: Step) -> list[dict[str, Any]]:
    ids = [f"call_{turn_index}_{step_index}_{k}" for k in range(len(step.results))]
    assistant = calling(*ids)
    if step.text:
        assistant["content"] = words(step.text)
    return [assistant, *(result(i, n) for i, n in zip(ids, step.results, strict=True))]


def shortest(turn: list[ChatMessage]) -> int:
    """The fewest tokens `trim_to_fit` can shorten a turn to: tool outputs of 64+ tokens down to 32."""
    return sum(32 if m.role == "tool" and m.token_count >= 64 else m.token_count for m in turn)


def check_pairs(messages: list[dict[str, Any]]) -> None:
    """Every tool result directly follows (after only results of the same batch) the assistant message that made
    the call, in call order, and every call is answered exactly once."""
    i = 0
    while i < len(messages):
        m = messages[i]
        assert m["role"] != "tool", f"orphan tool result at {i}: {m}"
        calls = [c["id"] for c in m.get("tool_calls", ())]
        answers = [r.get("tool_call_id") for r in messages[i + 1 : i + 1 + len(calls)]]
        assert answers == calls, f"split pair at {i}: calls {calls}, then {answers}"
        i += 1 + len(calls)


def check_prompt(session: Session, window: ContextWindow, prompt: list[dict[str, Any]] | None, available: int) -> None:
    live = session.live()
    # (b) The live total is the sum of the messages after the summary boundary, however it was reached.
    assert window.live_tokens == sum(m.token_count for m in live) == session.live_tokens
    assert window.summary_through == session.summary_through and window.summary_tokens == session.summary_tokens
    starts = turn_starts(live)
    assert starts and starts[0] == 0  # every cut lands before a user message
    newest = live[starts[-1] :]
    if prompt is None:
        # (c) Giving up is allowed only when the current turn alone cannot fit, even with its outputs shortened.
        assert session.summary_tokens + sum(m.token_count for m in newest) > available
        assert session.summary_tokens + shortest(newest) > available
        session.seen["gave up"] += 1
        return
    session.seen["prompts"] += 1
    assert prompt[0] == {"role": "system", "content": SYSTEM}
    body = prompt[1:]
    if session.summary:
        assert body[0] == {
            "role": "user",
            "content": f"<conversation_summary>\n{session.summary}\n</conversation_summary>",
        }
        body = body[1:]
    else:
        assert session.summary_tokens == 0
    # (a) What is sent is a suffix of the stored live messages that starts a turn, the pairs of the store intact:
    # nothing fabricated (no synthetic "interrupted" result), nothing dropped from inside a turn.
    start = len(live) - len(body)
    assert start in starts, f"the prompt starts inside a turn (at live message {start})"
    check_pairs(body)
    size = session.summary_tokens
    shortened = False
    for sent, stored in zip(body, live[start:], strict=True):
        original = stored_to_openai(stored)
        if stored.role == "tool" and sent != original:
            assert {**sent, "content": None} == {**original, "content": None}
            assert "tokens omitted" in sent["content"]
            shortened = True
            size += COUNTER.count_message(sent)
        else:
            assert sent == original
            size += stored.token_count
    assert all(m.get("content") != INTERRUPTED_RESULT for m in body)
    # The stored counts are the real ones; only the summary's wrapper (and a token or two where the summary meets
    # it) is left to the safety margin.
    assert COUNTER.count_messages(prompt[1:]) - REPLY_PRIMING_TOKENS <= size + SUMMARY_WRAPPER + 2
    # (c) The prompt fits, and no more was dropped or shortened than needed.
    assert size <= available
    if start > 0:
        session.seen["dropped turns"] += 1
        previous = max(s for s in starts if s < start)
        assert session.summary_tokens + sum(m.token_count for m in live[previous:]) > available
    if shortened:
        session.seen["shortened outputs"] += 1
        assert start == starts[-1]
        assert session.summary_tokens + sum(m.token_count for m in newest) > available


def run_session(config: Config, session_turns: list[Turn], data: st.DataObject) -> Session:
    """Each turn as `stream_chat_completion` handles it, with `Compactor.compact` simulated by `Session.compact`."""
    session = Session(config)
    policy = ContextPolicy(config.budget, Calibration())
    policy.calibration.ratio = config.ratio
    for t, turn in enumerate(session_turns):
        session.append(user(turn.user))  # the runner stores the user message before the turn starts
        window = session.load()
        model_calls = [step_messages(t, s, step) for s, step in enumerate(turn.steps)] + [[answer(turn.answer)]]
        failed = False
        squeeze = 1.0
        while model_calls:
            if policy.pressure(window.estimate(config.fixed)) == "hard":
                summariser_ok = data.draw(st.integers(0, 4), label="summariser ok") > 0
                if summariser_ok and session.compact(policy.keep_tokens):
                    window = session.load()
            available = int(policy.budget.limit * squeeze / policy.calibration.ratio) - config.fixed
            prompt = window.prompt(SYSTEM, [], available=available, counter=COUNTER)
            check_prompt(session, window, prompt, available)
            if prompt is None:
                failed = True  # context_too_long: the turn ends, nothing more is stored
                break
            if squeeze == 1.0 and data.draw(st.integers(0, 9), label="provider overflow") == 0:
                # The provider counted more than we did: one forced compaction, then the step again, squeezed.
                squeeze = 0.5
                if data.draw(st.booleans(), label="summariser ok") and session.compact(policy.keep_tokens // 2):
                    window = session.load()
                continue
            window.extend(session.append(*model_calls.pop(0)))
        background = not failed and policy.pressure(window.estimate(config.fixed), len(window.live)) != "ok"
        if background and data.draw(st.booleans(), label="background compaction runs"):
            session.compact(policy.keep_tokens, policy.budget.keep_messages)
    # (d) The folds cover 1..summary_through exactly.
    assert session.folded == set(range(1, session.summary_through + 1))
    return session


@settings(max_examples=300, deadline=None)
@given(configs, st.lists(turns, min_size=1, max_size=12), st.data())
def test_sessions_keep_fitting_without_breaking_tool_pairs(
    config: Config, session_turns: list[Turn], data: st.DataObject
) -> None:
    run_session(config, session_turns, data)


def test_the_simulated_sessions_exercise_compaction_and_trimming() -> None:
    """The property above is only worth something if its sessions compact, trim and sometimes give up."""
    sessions = dict.fromkeys((*SEEN, "folded twice or more"), 0)  # how many sessions saw each event at least once

    # A fixed draw of 200 sessions: with a random draw of 100, about one run in twelve saw fewer than 10 sessions
    # give up (seed 11: 8) and failed CI by chance. The property test above keeps drawing new sessions.
    @settings(max_examples=200, deadline=None, database=None, derandomize=True)
    @given(configs, st.lists(turns, min_size=1, max_size=12), st.data())
    def probe(config: Config, session_turns: list[Turn], data: st.DataObject) -> None:
        session = run_session(config, session_turns, data)
        for event, n in session.seen.items():
            sessions[event] += n > 0
        sessions["folded twice or more"] += session.seen["compactions"] > 1

    probe()
    assert all(n >= 10 for n in sessions.values()), sessions


# --- the summariser's input ----------------------------------------------------------------------------------


def stored_turn(session: Session, turn: Turn, index: int = 0) -> list[ChatMessage]:
    rows = session.append(user(turn.user))
    for s, step in enumerate(turn.steps):
        rows += session.append(*step_messages(index, s, step))
    return rows + session.append(answer(turn.answer))


def request_tokens(request: list[dict[str, str]]) -> int:
    return COUNTER.count_messages(request)


def test_a_long_single_turn_is_cut_to_the_summarisers_bound() -> None:
    # 10 rounds of 3 calls: 42 messages, each over the old 64-token floor of a per-message share.
    turn = Turn(20, tuple(Step(0, (100, 100, 100)) for _ in range(10)), 100)
    span = stored_turn(Session(CONFIG), turn)
    assert len(span) == 42 and sum(m.token_count for m in span) > 3_500
    request = compactor(256, 64).summariser_messages(None, span)
    assert request_tokens(request) <= summariser_overhead(None, 64) + 256 + 16
    transcript = request[1]["content"]
    # Every message is still there, each cut to its share.
    assert (transcript.count("[user] "), transcript.count("[assistant] "), transcript.count("[tool] ")) == (1, 11, 30)


def test_the_summariser_cuts_the_long_messages_and_keeps_the_short_ones_whole() -> None:
    turn = Turn(30, (Step(12, (2_000, 10, 3_000)),), 40)
    span = stored_turn(Session(CONFIG), turn)
    request = compactor(1_500, 300).summariser_messages("what came before", span)
    assert request_tokens(request) <= summariser_overhead("what came before", 300) + 1_500 + 16
    transcript = request[1]["content"]
    assert transcript.count("tokens omitted") == 2
    assert f"[user] {words(30)}\n\n" in transcript
    assert f"[tool] {words(10)}\n\n" in transcript
    assert transcript.endswith(f"[assistant] {words(40)}\n</new_messages>")
    assert "<previous_summary>\nwhat came before\n</previous_summary>" in transcript


def test_a_span_within_the_bound_is_sent_whole() -> None:
    turn = Turn(30, (Step(12, (200, 10, 300)),), 40)
    span = stored_turn(Session(CONFIG), turn)
    transcript = compactor(1_500, 300).summariser_messages(None, span)[1]["content"]
    assert "tokens omitted" not in transcript
    for m in span:
        assert (m.content or "") in transcript
    assert "[called lookup(" in transcript


@settings(max_examples=300, deadline=None)
@given(
    st.lists(turns, min_size=1, max_size=4),
    st.sampled_from([256, 1_500, 4_000, 16_000]),
    st.sampled_from([64, 1_024]),
    st.one_of(st.none(), st.integers(1, 1_024).map(words)),
)
def test_summariser_input_is_bounded(
    span_turns: list[Turn], max_input: int, max_summary: int, previous: str | None
) -> None:
    session = Session(CONFIG)
    for t, turn in enumerate(span_turns):
        stored_turn(session, turn, t)
    # What `choose_cut` can hand over: whole turns within max_input, or a single turn of any size.
    span = session.rows
    if len(span_turns) > 1 and sum(m.token_count for m in span) > max_input:
        first_turn_end = turn_starts(span)[1]
        span = span[:first_turn_end]
    request = compactor(max_input, max_summary).summariser_messages(previous, span)
    assert COUNTER.count_messages(request) <= summariser_overhead(previous, max_summary) + max_input + 16
