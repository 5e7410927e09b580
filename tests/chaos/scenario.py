"""One chaos scenario's run: N sessions with one streaming turn each, a fault, then the figures.

`Run.begin` creates the sessions (each with a user of its own, so per-user limits never get in the way) and starts
their clients, alternating pods; the scenario injects its fault (`mark_fault` records when) and undoes it;
`Run.figures` waits for every client to stop following, for the sessions to be free and the replies to be stored
(both may take a while after a fault: a lease to run out, a store to come back), then counts.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from tests.chaos.accounting import Figures, TurnAccount, account, session_rows
from tests.chaos.driver import ClientView, Driver, TurnPlan
from tests.chaos.harness import Rig


def reply_words(tag: str, count: int) -> str:
    """A reply of `count` words that appear nowhere else, so repeated text cannot hide."""
    return " ".join(f"{tag}w{i}" for i in range(count))


def text_turn(tag: str, words: int, delay_ms: float, *, markers: str = "") -> tuple[str, str]:
    """The message asking the mock model for `words` unique words, `delay_ms` apart (after `markers`), and that
    reply."""
    reply = reply_words(tag, words)
    return f'{markers}[[mock:text content="{reply}" delay_ms={delay_ms:g}]]', reply


@dataclass
class Run:
    rig: Rig
    driver: Driver
    name: str
    within: float
    """How long a client follows its turn before it gives up (the scenario's hard bound)."""
    plans: list[TurnPlan] = field(default_factory=list)
    views: list[ClientView] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    fault_at: float | None = None
    extra: list[ClientView] = field(default_factory=list)
    """Second messages sent while the first turns ran (`send_again`)."""

    @classmethod
    async def begin(
        cls, rig: Rig, driver: Driver, name: str, messages: Sequence[tuple[str, str]], *, within: float = 60
    ) -> Run:
        run = cls(rig, driver, name, within)
        tag = uuid.uuid4().hex[:6]
        users = [f"chaos-{tag}-{i}" for i in range(len(messages))]
        pods = len(rig.pods)
        sessions = await asyncio.gather(*(driver.new_session(u, i % pods) for i, u in enumerate(users)))
        for i, (user, session_id, (message, expected)) in enumerate(zip(users, sessions, messages, strict=True)):
            plan = TurnPlan(user, session_id, i % pods, message, expected)
            view = ClientView(plan)
            run.plans.append(plan)
            run.views.append(view)
            run.tasks.append(asyncio.create_task(driver.follow(view, within=within)))
        return run

    async def streaming(self, deltas: int = 3, *, within: float = 30) -> None:
        """Until every client has received `deltas` text deltas (or its stream ended)."""
        deadline = time.monotonic() + within
        while not all(v.deltas >= deltas or v.finished for v in self.views):
            if time.monotonic() > deadline:
                slow = [v.plan.session_id for v in self.views if v.deltas < deltas and not v.finished]
                raise AssertionError(f"{len(slow)} streams did not start within {within}s: {slow[:3]}")
            await asyncio.sleep(0.05)

    async def shown_whole(self, *, within: float = 30) -> None:
        """Until every client has received its whole reply's text (or its stream ended). Not a count of deltas:
        deltas a follower had not taken yet are merged, and `finish` comes only once the reply is stored."""
        deadline = time.monotonic() + within
        while not all(v.text == v.plan.expected or v.finished for v in self.views):
            if time.monotonic() > deadline:
                slow = [v.plan.session_id for v in self.views if v.text != v.plan.expected and not v.finished]
                raise AssertionError(f"{len(slow)} replies were not shown whole within {within}s: {slow[:3]}")
            await asyncio.sleep(0.05)

    def mark_fault(self) -> float:
        self.fault_at = time.monotonic()
        return self.fault_at

    async def send_again(self, message: str, *, within: float = 30) -> None:
        """Each session gets a second message while its first turn runs, to the other pod."""
        views = [ClientView(TurnPlan(p.user, p.session_id, p.pod + 1, message, "")) for p in self.plans]
        self.extra += views
        await asyncio.gather(*(self.driver.follow(v, within=within) for v in views))

    async def figures(self, *, settle: float = 15) -> Figures:
        """Wait for the clients, then up to `settle` seconds for free sessions and stored replies; count."""
        await asyncio.gather(*self.tasks)
        fault_at = self.fault_at if self.fault_at is not None else min(v.sent_at for v in self.views)
        figures = Figures(self.name)
        figures.started = sum(1 for v in self.views if v.task_id is not None)
        figures.unclosed = sum(1 for v in self.views if v.closed_at is None)
        closes = [v.closed_at - fault_at for v in self.views if v.closed_at is not None]
        figures.longest_close_s = max([0.0, *closes])
        figures.open_tools = sum(1 for v in self.views if v.open_tool_calls())
        figures.second_turns = sum(1 for v in self.extra if v.task_id is not None)
        busy, accounts = await self._settled(settle)
        figures.busy = len(busy)
        for turn in accounts:
            figures.add(turn)
        for session_id, state in busy[:3]:
            figures.problems.append(f"busy: session {session_id}: {state}")
        for view in self.views:
            if view.closed_at is None and len(figures.problems) < 12:
                figures.problems.append(f"unclosed: session {view.plan.session_id}: {view.frames} frames")
        return figures

    async def _settled(self, settle: float) -> tuple[list[tuple[str, str]], list[TurnAccount]]:
        deadline = time.monotonic() + settle
        conn = await asyncpg.connect(self.rig.postgres.dsn)
        try:
            while True:
                states = await asyncio.gather(*(self.driver.active_task(p) for p in self.plans))
                busy = [(p.session_id, str(s)) for p, s in zip(self.plans, states, strict=True) if s is not None]
                rows = await session_rows(conn, [p.session_id for p in self.plans])
                accounts = [account(p, [v for v in self.views if v.plan is p], rows[p.session_id]) for p in self.plans]
                if time.monotonic() > deadline or (not busy and all(a.verdict == "stored once" for a in accounts)):
                    return busy, accounts
                await asyncio.sleep(0.5)
        finally:
            await conn.close()
