"""Extending a session's rolling summary: fold the oldest live turns into it with one summariser call.

The summariser reads the previous summary plus only the newly folded span (bounded), so each message is
summarised once and the cost of a compaction does not grow with the session. A Redis lock keeps two pods from
summarising the same session at once, and the commit is a compare-and-set on the summary's position, so a
summary computed from a stale state can never land.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Sequence
from uuid import UUID

from redis.asyncio import Redis

from backend import keys
from backend.chat.context_budget import choose_cut
from backend.chat.llm import LLMClient
from backend.chat.tokens import TokenCounter, truncate_middle
from backend.store.models import ChatMessage, ChatSession
from backend.store.sessions import SessionStore

log = logging.getLogger("copilot.compaction")

SUMMARY_INSTRUCTION = (
    "You maintain the running summary of a conversation between a user and an AI copilot. Update the summary so "
    "it also covers the new messages. Keep facts, decisions, names, numbers, open questions, what tools returned "
    "and what the user wants; drop small talk. Write plain prose or terse bullet points, at most {max_words} words. "
    "Answer with the updated summary only."
)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Compactor:
    def __init__(
        self,
        *,
        llm: LLMClient,
        store: SessionStore,
        redis: Redis,
        counter: TokenCounter,
        model: str | None,
        max_input_tokens: int,
        max_summary_tokens: int,
        timeout_seconds: float,
    ) -> None:
        self._llm = llm
        self._store = store
        self._redis = redis
        self._counter = counter
        self._model = model
        self._max_input = max_input_tokens
        self._max_summary = max_summary_tokens
        self._timeout = timeout_seconds
        self._release = redis.register_script(_RELEASE)
        self._tasks: dict[UUID, asyncio.Task[None]] = {}

    async def compact(
        self, session_id: UUID, *, keep_tokens: int, keep_messages: int | None = None
    ) -> ChatSession | None:
        """Fold old turns so at most `keep_tokens` (and `keep_messages`) stay live. The new session state, or None
        if nothing was folded (nothing to fold, another compaction holds the lock, or another writer committed
        first).

        Raises `TimeoutError` or `ModelError` when the summariser fails; the caller decides what to do.
        """
        token = secrets.token_hex(8)
        lock = keys.compaction_lock(session_id)
        if not await self._redis.set(lock, token, nx=True, px=int((self._timeout + 5) * 1000)):
            return await self._await_other(session_id, lock)
        try:
            session = await self._store.get_any(session_id)
            if session is None:
                return None
            live = await self._store.messages(session_id, after=session.summary_through)
            through = choose_cut(
                live, keep_tokens=keep_tokens, max_fold_tokens=self._max_input, keep_messages=keep_messages
            )
            if through is None:
                return None
            span = [m for m in live if m.sequence <= through]
            request = self.summariser_messages(session.summary, span)
            async with asyncio.timeout(self._timeout):
                text = await self._llm.complete(request, model=self._model, max_tokens=self._max_summary)
            summary = text.strip()
            if not summary:
                return None
            committed = await self._store.commit_summary(
                session_id,
                expected_through=session.summary_through,
                through=through,
                summary=summary,
                summary_tokens=self._counter.count_text(summary),
            )
            if committed is not None:
                log.info("session %s: summary now covers messages 1..%d", session_id, through)
            return committed
        finally:
            await self._release(keys=[lock], args=[token])

    async def _await_other(self, session_id: UUID, lock: str) -> ChatSession | None:
        """Another pod (or a background task) is compacting this session: wait for it rather than trimming."""
        before = await self._store.get_any(session_id)
        async with asyncio.timeout(self._timeout + 5):
            while await self._redis.exists(lock):  # noqa: ASYNC110 - the holder may be another pod
                await asyncio.sleep(0.05)
        after = await self._store.get_any(session_id)
        if before is None or after is None or after.summary_through <= before.summary_through:
            return None
        return after

    def schedule(self, session_id: UUID, *, keep_tokens: int, keep_messages: int | None = None) -> None:
        """Compact in the background (after a turn); one at a time per session on this pod; failures are logged
        and retried by a later turn."""
        if session_id in self._tasks:
            return
        task = asyncio.create_task(self._background(session_id, keep_tokens, keep_messages))
        self._tasks[session_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(session_id, None))

    async def _background(self, session_id: UUID, keep_tokens: int, keep_messages: int | None) -> None:
        try:
            await self.compact(session_id, keep_tokens=keep_tokens, keep_messages=keep_messages)
        except Exception:
            log.warning("background compaction of %s failed; a later turn retries", session_id, exc_info=True)

    def summariser_messages(self, previous: str | None, span: Sequence[ChatMessage]) -> list[dict[str, str]]:
        """The summariser's prompt: the previous summary and the newly folded messages, within the input bound."""
        lines = []
        for m in span:
            text = m.content or ""
            if m.tool_calls:
                calls = ", ".join(
                    f"{c['function']['name']}({c['function'].get('arguments', '')})" for c in m.tool_calls
                )
                text = f"{text}\n[called {calls}]".strip()
            lines.append((f"[{m.role}] ", text))
        # The bound holds for the transcript as sent (prefixes included, a token for each separator), however many
        # messages the span has: a single turn over the bound is folded whole.
        sizes = [self._counter.count_text(prefix + text) for prefix, text in lines]
        caps = _fair_shares(sizes, self._max_input - len(lines))
        parts = []
        for (prefix, text), cap in zip(lines, caps, strict=True):
            if cap is not None:
                text = truncate_middle(text, cap - self._counter.count_text(prefix), self._counter)
            parts.append(prefix + text)
        transcript = "\n\n".join(parts)
        previous_text = previous or "(none yet)"
        max_words = max(50, int(self._max_summary * 0.7))
        return [
            {"role": "system", "content": SUMMARY_INSTRUCTION.format(max_words=max_words)},
            {
                "role": "user",
                "content": f"<previous_summary>\n{previous_text}\n</previous_summary>\n\n"
                f"<new_messages>\n{transcript}\n</new_messages>",
            },
        ]

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)


def _fair_shares(sizes: Sequence[int], budget: int) -> list[int | None]:
    """Caps that make `sizes` sum to at most `budget`: the smallest items are kept whole (None) and what is left
    is split evenly among the rest, so a few long messages are cut instead of every message."""
    caps: list[int | None] = [None] * len(sizes)
    left = max(0, budget)
    for n, i in enumerate(sorted(range(len(sizes)), key=lambda j: sizes[j])):
        share = left // (len(sizes) - n)
        if sizes[i] > share:
            caps[i] = share
        left -= min(sizes[i], share)
    return caps
