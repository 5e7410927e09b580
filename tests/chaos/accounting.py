"""The accounting after a fault: what Postgres holds for each turn, checked against what its clients saw.

A turn is **stored once** when its user message is stored exactly once and is followed (before the session's next
user message) by exactly one assistant reply whose text, without the `[interrupted]` mark, is the beginning of the
reply the model was asked for (all of it when a client saw the message finish normally); or, when the turn ended
with an error before any text reached a client, by no reply at all (a clear error, nothing to keep).

It is **lost** when its user message is missing, when no reply is stored although a client saw text or no clear
error, or when a client saw the reply finish normally but less was stored. It is **duplicated** when its user
message or its reply is stored more than once, when stored or received text is not a beginning of the expected
reply (text repeated), when a client received a frame twice, or when a message got two `finish` chunks.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import asyncpg

from tests.chaos.driver import ClientView, TurnPlan

INTERRUPTED_MARK = "[interrupted]"

Verdict = Literal["stored once", "lost", "duplicated"]


@dataclass(frozen=True)
class Row:
    role: str
    content: str


@dataclass
class TurnAccount:
    plan: TurnPlan
    views: list[ClientView]
    verdict: Verdict
    why: str = ""
    reply: str | None = None
    """The stored reply's text without its mark (None: no reply stored)."""
    unkept: int = 0
    """Characters a client was shown beyond the stored reply (what a dead pod had not yet written to Redis)."""


def strip_mark(text: str) -> str:
    return text.removesuffix(INTERRUPTED_MARK).rstrip("\n") if text.endswith(INTERRUPTED_MARK) else text


async def session_rows(conn: asyncpg.Connection, session_ids: Sequence[str]) -> dict[str, list[Row]]:
    """Every stored message of the sessions, in order."""
    records = await conn.fetch(
        "SELECT session_id, role, content FROM chat_messages WHERE session_id = ANY($1::uuid[]) "
        "ORDER BY session_id, sequence",
        [uuid.UUID(s) for s in session_ids],
    )
    rows: dict[str, list[Row]] = {s: [] for s in session_ids}
    for r in records:
        rows[str(r["session_id"])].append(Row(r["role"], r["content"] or ""))
    return rows


def account(plan: TurnPlan, views: Sequence[ClientView], rows: Sequence[Row]) -> TurnAccount:
    """The verdict on one turn, from its session's stored rows and every client's view of it."""
    users = [i for i, r in enumerate(rows) if r.role == "user" and r.content == plan.message]
    result = TurnAccount(plan, list(views), "stored once")
    if not users:
        return _lost(result, "the user message is not stored")
    if len(users) > 1:
        return _duplicated(result, f"the user message is stored {len(users)} times")
    after = rows[users[0] + 1 :]
    end = next((i for i, r in enumerate(after) if r.role == "user"), len(after))
    replies = [r.content for r in after[:end] if r.role == "assistant"]
    for view in views:
        problem = _client_problem(plan, view)
        if problem:
            return _duplicated(result, problem)
    seen = max((v.text for v in views), key=len, default="")
    clear_error = any(v.errors for v in views) and not seen
    if not replies:
        if clear_error:
            return result
        following = ", ".join(f"{r.role} {_describe(r.content)}" for r in after[:4]) or "nothing"
        return _lost(result, f"no reply stored (a client saw {len(seen)} chars; then {following})")
    if len(replies) > 1:
        described = ", ".join(_describe(r) for r in replies)
        return _duplicated(result, f"{len(replies)} replies stored ({described}; expected {len(plan.expected)})")
    result.reply = strip_mark(replies[0])
    if seen.startswith(result.reply):
        result.unkept = len(seen) - len(result.reply)
    if not plan.expected.startswith(result.reply):
        return _duplicated(result, f"the stored reply is not a beginning of the expected one: {result.reply[:80]!r}")
    if any(v.finish_reasons[-1:] == ["stop"] for v in views) and result.reply != seen:
        return _lost(result, f"a client saw the reply complete ({len(seen)} chars), {len(result.reply)} were stored")
    return result


def _client_problem(plan: TurnPlan, view: ClientView) -> str:
    if view.repeated_frames:
        return f"a client received {view.repeated_frames} frames twice"
    if len(view.finish_reasons) > 1:
        return f"a client received {len(view.finish_reasons)} finish chunks"
    if not plan.expected.startswith(view.text):
        return f"a client received text that is not a beginning of the reply: {view.text[:80]!r}"
    return ""


def _describe(reply: str) -> str:
    return f"{len(strip_mark(reply))} chars" + (" + mark" if reply.endswith(INTERRUPTED_MARK) else "")


def _lost(result: TurnAccount, why: str) -> TurnAccount:
    result.verdict, result.why = "lost", why
    return result


def _duplicated(result: TurnAccount, why: str) -> TurnAccount:
    result.verdict, result.why = "duplicated", why
    return result


@dataclass
class Figures:
    """One scenario's figures: the table row of docs/reliability.md."""

    scenario: str
    started: int = 0
    """Turns whose message was accepted (the client got a task id)."""
    stored_once: int = 0
    lost: int = 0
    duplicated: int = 0
    busy: int = 0
    """Sessions still reporting an active task once every stream had closed and the lease had run out."""
    longest_close_s: float = 0.0
    """From the fault (for a fault of the model: from sending the message) to the last stream's close."""
    unclosed: int = 0
    """Streams still open at the scenario's deadline."""
    open_tools: int = 0
    """Turns whose client still shows a tool call running after the stream ended."""
    second_turns: int = 0
    """Sessions where a second message was accepted while their first turn ran (one turn at a time: 0)."""
    unkept_chars: int = 0
    """The most text (characters) a client was shown beyond what was stored for its turn. Not a target: a pod
    killed mid-reply takes the text of its last publish window with it (clients are told the reply broke off)."""
    problems: list[str] = field(default_factory=list)
    """The first few reasons behind the counts, for the failure message."""

    def add(self, turn: TurnAccount) -> None:
        if turn.verdict == "stored once":
            self.stored_once += 1
        elif turn.verdict == "lost":
            self.lost += 1
        else:
            self.duplicated += 1
        self.unkept_chars = max(self.unkept_chars, turn.unkept)
        if turn.why and len(self.problems) < 8:
            self.problems.append(f"{turn.verdict}: session {turn.plan.session_id}: {turn.why}")

    def row(self) -> dict[str, object]:
        return {
            "scenario": self.scenario,
            "started": self.started,
            "stored_once": self.stored_once,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "busy": self.busy,
            "longest_close_s": round(self.longest_close_s, 1),
            "unclosed": self.unclosed,
            "open_tools": self.open_tools,
            "second_turns": self.second_turns,
            "unkept_chars": self.unkept_chars,
        }
