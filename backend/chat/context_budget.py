"""Fitting a conversation into the model's window: budgets, where to cut, and the emergency trim. Pure functions.

A prompt is: system prompt + tool schemas (counted once per version) + the rolling summary + the live messages
after it + per-turn context. Every size here comes from stored token counts, so deciding costs O(1) per call and
never re-tokenises the history. Cuts fall on turn boundaries (just before a user message), so a tool call and its
results are always folded, kept or dropped together.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Pressure = Literal["ok", "soft", "hard"]


class Counted(Protocol):
    @property
    def sequence(self) -> int: ...

    @property
    def role(self) -> str: ...

    @property
    def token_count(self) -> int: ...


@dataclass(frozen=True, slots=True)
class ContextBudget:
    window: int
    """The model's context window, in tokens."""
    reserved_output: int
    """Tokens kept free for the reply."""
    margin: float = 0.05
    """Fraction of the input budget kept free for counting error."""
    soft: float = 0.6
    """Above this fraction of the input budget the summary is extended in the background after the turn."""
    hard: float = 0.85
    """Above this fraction it is extended before the model call."""
    target: float = 0.35
    """After a compaction the live messages take at most this fraction of the input budget."""
    max_live_messages: int = 0
    """Above this many live messages the summary is extended in the background, down to half as many (0: no
    bound). Many short messages never press on the window, but each costs work in every prompt."""

    @property
    def limit(self) -> int:
        """Tokens the prompt may take."""
        return max(0, int((self.window - self.reserved_output) * (1 - self.margin)))

    @property
    def keep_messages(self) -> int | None:
        """Most live messages a compaction leaves (None: no bound)."""
        return max(1, self.max_live_messages // 2) if self.max_live_messages else None

    def pressure(self, prompt_tokens: float, live_messages: int = 0) -> Pressure:
        if prompt_tokens > self.limit * self.hard:
            return "hard"
        if prompt_tokens > self.limit * self.soft:
            return "soft"
        if 0 < self.max_live_messages < live_messages:
            return "soft"  # the model is not at risk, so it never waits for this one
        return "ok"


def turn_starts(messages: Sequence[Counted]) -> list[int]:
    """Indexes of the messages that start a turn (user messages)."""
    return [i for i, m in enumerate(messages) if m.role == "user"]


def choose_cut(
    messages: Sequence[Counted], *, keep_tokens: int, max_fold_tokens: int, keep_messages: int | None = None
) -> int | None:
    """The sequence to fold the summary through, or None when nothing can be folded.

    `messages` are the live messages (after the current summary), oldest first. The cut is just before a user
    message, never after the newest one (the current turn stays live). It folds as little as it can while leaving
    at most `keep_tokens` (and `keep_messages`, when given) live, and never more than `max_fold_tokens` at once
    (the summariser's input stays bounded; a further compaction folds the rest). When the oldest turn alone
    exceeds `max_fold_tokens` it is still folded whole (its messages are shortened in the summariser's input
    instead).
    """
    starts = turn_starts(messages)
    boundaries = [i for i in starts if i > 0]  # folding everything before message i
    if not boundaries:
        return None
    total = sum(m.token_count for m in messages)
    prefix = 0
    chosen: int | None = None
    folded_at: dict[int, int] = {}
    for i, m in enumerate(messages):
        folded_at[i] = prefix
        prefix += m.token_count
    for b in boundaries:
        folded = folded_at[b]
        if chosen is not None and folded > max_fold_tokens:
            break
        chosen = b
        if total - folded <= keep_tokens and (keep_messages is None or len(messages) - b <= keep_messages):
            break
    assert chosen is not None
    return messages[chosen - 1].sequence


def trim_to_fit(
    messages: Sequence[dict[str, Any]],
    counts: Sequence[int],
    available: int,
    *,
    shorten: Callable[[dict[str, Any], int], dict[str, Any]],
) -> list[dict[str, Any]] | None:
    """For one model call when the summary could not be extended: drop the oldest whole turns, then shorten
    oversized tool outputs, until the live messages fit `available` tokens. None if even the newest turn alone
    cannot fit.

    `shorten(message, max_tokens)` returns the tool message with its content cut (head and tail kept) so the
    whole message, framing included, takes at most `max_tokens`: `counts` include the framing too.
    """
    starts = [i for i, m in enumerate(messages) if m.get("role") == "user"] or [0]
    for start in starts:
        kept = list(messages[start:])
        kept_counts = list(counts[start:])
        if sum(kept_counts) <= available:
            return kept
    # Only the newest turn is left and it is still too large: shorten its biggest tool outputs.
    kept, kept_counts = list(messages[starts[-1] :]), list(counts[starts[-1] :])
    over = sum(kept_counts) - available
    for i in sorted(range(len(kept)), key=lambda j: kept_counts[j], reverse=True):
        if over <= 0:
            break
        if kept[i].get("role") != "tool" or kept_counts[i] < 64:
            continue
        allowed = max(32, kept_counts[i] - over)
        kept[i] = shorten(kept[i], allowed)
        over -= kept_counts[i] - allowed
    return kept if over <= 0 else None
