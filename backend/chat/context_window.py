"""The context of one turn: the session's rolling summary plus the live messages after it, sized from stored
token counts, fitted to the model's budget before every model call."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from backend.chat.compaction import Compactor
from backend.chat.context_budget import ContextBudget, Pressure, trim_to_fit
from backend.chat.messages import row_to_openai, stored_to_openai, to_openai_messages
from backend.chat.tokens import TokenCounter, truncate_middle
from backend.errors import ModelError
from backend.store.models import ChatMessage, ChatSession, MessageRow
from backend.store.sessions import SessionStore

log = logging.getLogger("copilot.window")


class Calibration:
    """Running ratio of the provider's reported prompt tokens to our estimate (tiktoken is exact for OpenAI
    models and an approximation for others)."""

    def __init__(self) -> None:
        self.ratio = 1.0

    def observe(self, estimated: int, reported: int) -> None:
        if estimated > 0 and reported > 0:
            sample = min(2.0, max(0.5, reported / estimated))
            self.ratio = 0.8 * self.ratio + 0.2 * sample


@dataclass
class ContextWindow:
    session_id: UUID
    summary: str | None
    summary_tokens: int
    summary_through: int
    live: list[dict[str, Any]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @classmethod
    async def load(
        cls, store: SessionStore, session: ChatSession, *, rows: Sequence[MessageRow] | None = None
    ) -> ContextWindow:
        """Reads only the summary and the messages after it (unless the caller read them: `rows`): the cost does not
        grow with the session."""
        if rows is None:
            rows = await store.message_rows(session.id, after=session.summary_through)
        return cls(
            session.id,
            session.summary,
            session.summary_tokens,
            session.summary_through,
            [row_to_openai(r) for r in rows],
            [r["token_count"] for r in rows],
        )

    @property
    def live_tokens(self) -> int:
        return sum(self.counts)

    def extend(self, stored: list[ChatMessage]) -> None:
        self.live += [stored_to_openai(m) for m in stored]
        self.counts += [m.token_count for m in stored]

    def estimate(self, fixed_tokens: int) -> int:
        return fixed_tokens + self.summary_tokens + self.live_tokens

    async def compact(self, compactor: Compactor, store: SessionStore, *, keep_tokens: int) -> bool:
        """Extend the summary; on success reload from it. False when nothing was folded or the summariser failed
        (the caller then trims this call's messages instead; a later turn retries)."""
        try:
            session = await compactor.compact(self.session_id, keep_tokens=keep_tokens)
        except (TimeoutError, ModelError) as e:
            log.warning("session %s: summariser failed (%s); trimming this call instead", self.session_id, e)
            return False
        if session is None:
            return False
        fresh = await ContextWindow.load(store, session)
        self.summary, self.summary_tokens, self.summary_through = (
            fresh.summary,
            fresh.summary_tokens,
            fresh.summary_through,
        )
        self.live, self.counts = fresh.live, fresh.counts
        return True

    def prompt(
        self, system_prompt: str, context: list[dict[str, Any]], *, available: int, counter: TokenCounter
    ) -> list[dict[str, Any]] | None:
        """The messages of one model call within `available` tokens for summary and live messages; None if even
        the newest turn cannot fit (the system prompt is never cut)."""
        summary = _summary_message(self.summary)
        live: list[dict[str, Any]] | None = self.live
        if self.summary_tokens + self.live_tokens > available:
            live = trim_to_fit(
                self.live,
                self.counts,
                available - self.summary_tokens,
                shorten=lambda message, n: _shorten(message, n, counter),
            )
        if live is None:
            return None
        return to_openai_messages(live, system_prompt=system_prompt, context=[*summary, *context])


def _shorten(message: dict[str, Any], max_tokens: int, counter: TokenCounter) -> dict[str, Any]:
    # `max_tokens` is for the whole message: its role, call id and framing take their share first.
    framing = counter.count_message({**message, "content": ""})
    content = truncate_middle(str(message.get("content", "")), max_tokens - framing, counter)
    return {**message, "content": content}


def _summary_message(summary: str | None) -> list[dict[str, Any]]:
    # The summary holds user-influenced text, so it is context in a user message, never part of the system prompt.
    if not summary:
        return []
    return [{"role": "user", "content": f"<conversation_summary>\n{summary}\n</conversation_summary>"}]


@dataclass(frozen=True, slots=True)
class ContextPolicy:
    budget: ContextBudget
    calibration: Calibration

    def pressure(self, estimated: int, live_messages: int = 0) -> Pressure:
        return self.budget.pressure(estimated * self.calibration.ratio, live_messages)

    @property
    def keep_tokens(self) -> int:
        return int(self.budget.limit * self.budget.target)
