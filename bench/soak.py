"""`python -m bench soak`: many concurrent streams for a long time, turns, reconnects and cancels mixed.

It runs on the chaos suite's rig (tests/chaos/harness.py: its own PostgreSQL and Redis on free ports, the mock model
and two `copilot serve` pods), so it needs no shared server and cannot disturb one. Each virtual user has a session
of its own and runs turns back to back with a short pause: most turns are followed to the end; some clients drop
the connection after a few words and reconnect to the other pod with `Last-Event-ID`; some cancel the reply from
the other pod. Every minute it prints the pods' resident memory (RSS).

At the end every turn is checked in Postgres as the chaos suite does (tests/chaos/accounting.py). The run fails
(exit code 1) if the pods' RSS grew more than `--max-growth` between the end of the warm-up and the end of the run,
or if any turn was lost or duplicated, or a session was left busy. A benchmark, not a test: the default run takes
ten minutes with 200 streams; `--duration 60 --concurrency 50 --warmup 20 --sample-every 10` is a smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg
import psutil

from bench.settings import ROOT
from tests.chaos.accounting import TurnAccount, account, session_rows
from tests.chaos.driver import ClientView, Driver, TurnPlan
from tests.chaos.harness import Rig
from tests.chaos.scenario import text_turn
from tests.chaos.servers import missing_servers

Kind = Literal["turn", "reconnect", "cancel"]
_MB = 1024 * 1024


@dataclass(frozen=True)
class SoakSettings:
    duration: float = 600.0
    """Seconds during which users start new turns."""
    concurrency: int = 200
    """Virtual users, each with a session and at most one turn at a time."""
    warmup: float = 120.0
    """RSS growth is measured from the first sample at or after this many seconds."""
    sample_every: float = 60.0
    words: int = 60
    """Words of each reply."""
    delay_ms: float = 50.0
    """Pause between two words of the mock model (50 ms: 20 words/s)."""
    think: float = 1.0
    """Mean pause of a user between two turns."""
    turns_per_session: int = 20
    """A user starts a new session after this many turns, as people start new chats: histories (and the model
    tokens a user spends, which per-user limits count) stay bounded however long the run."""
    reconnect_share: float = 0.15
    cancel_share: float = 0.15
    max_growth: float = 0.10
    lease_seconds: float = 30.0
    """The pods' `COPILOT_TURN_LEASE_SECONDS` (production's default: no pod dies here, so none is waited for)."""
    seed: int = 1
    out: Path = ROOT / ".bench" / "soak-results.json"


@dataclass
class Sample:
    at: float
    rss: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.rss.values())


@dataclass
class Soak:
    settings: SoakSettings
    rig: Rig
    driver: Driver
    views: list[tuple[Kind, ClientView]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    started: float = 0.0

    async def run(self) -> dict[str, Any]:
        self.started = time.monotonic()
        sampler = asyncio.create_task(self._sample())
        try:
            await asyncio.gather(*(self._user(i) for i in range(self.settings.concurrency)))
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        self._take_sample()  # the end of the run, once every turn has ended
        accounts, busy = await self._settle()
        return self._results(accounts, busy)

    async def _user(self, index: int) -> None:
        s = self.settings
        rng = random.Random(s.seed * 100_003 + index)
        user = f"soak-{index}"
        pods = len(self.rig.pods)
        await asyncio.sleep(rng.uniform(0, min(5.0, s.duration / 10)))  # ramp up
        end = self.started + s.duration
        turn = 0
        session = ""
        while time.monotonic() < end:
            if turn % s.turns_per_session == 0:
                session = await self.driver.new_session(user, index + turn)
            message, expected = text_turn(f"u{index}t{turn}", s.words, s.delay_ms)
            plan = TurnPlan(user, session, (index + turn) % pods, message, expected)
            kind = _pick(rng, s)
            view = ClientView(plan)
            self.views.append((kind, view))
            await self._play(kind, view, rng)
            turn += 1
            await asyncio.sleep(rng.uniform(0.5, 1.5) * s.think)

    async def _play(self, kind: Kind, view: ClientView, rng: random.Random) -> None:
        within = self.settings.words * self.settings.delay_ms / 1000 + 60
        if kind == "turn":
            await self.driver.follow(view, within=within)
            return
        first = asyncio.create_task(self.driver.follow(view, within=within))
        words = rng.randint(2, max(2, self.settings.words // 2))
        give_up = time.monotonic() + within
        while view.deltas < words and not first.done():
            if time.monotonic() > give_up:
                break
            await asyncio.sleep(0.02)
        other = view.plan.pod + 1
        if kind == "reconnect":
            first.cancel()  # the tab goes away mid-reply; a new one asks the other pod for the rest
            await asyncio.gather(first, return_exceptions=True)
            if not view.finished:
                view.reconnects += 1
                await self.driver.follow(view, within=within, pod=other)
            return
        await self.driver.request("POST", other, f"/api/chat/sessions/{view.plan.session_id}/cancel", view.plan.user)
        await first

    async def _sample(self) -> None:
        while True:
            await asyncio.sleep(self.settings.sample_every)
            self._take_sample()

    def _take_sample(self) -> None:
        rss = {}
        for pod in self.rig.pods:
            try:
                rss[pod.name] = psutil.Process(pod.process.pid).memory_info().rss
            except psutil.Error:
                rss[pod.name] = 0
        sample = Sample(time.monotonic() - self.started, rss)
        self.samples.append(sample)
        kinds = Counter(kind for kind, v in self.views if v.closed_at is not None)
        pods = "  ".join(f"{name} {value / _MB:7.1f} MB" for name, value in rss.items())
        print(
            f"[{sample.at:6.0f}s] rss {pods}  total {sample.total / _MB:7.1f} MB  turns ended {sum(kinds.values())} "
            f"({kinds['turn']} followed, {kinds['reconnect']} reconnected, {kinds['cancel']} cancelled)",
            flush=True,
        )

    async def _settle(self, within: float = 30.0) -> tuple[list[TurnAccount], list[str]]:
        """Wait for the sessions to be free and the replies stored (bounded), then account for every turn."""
        started = [v for _, v in self.views if v.task_id is not None]
        plans = {v.plan.session_id: v.plan for v in started}
        deadline = time.monotonic() + within
        conn = await asyncpg.connect(self.rig.postgres.dsn)
        try:
            while True:
                states = await asyncio.gather(*(self.driver.active_task(p) for p in plans.values()))
                busy = [sid for sid, state in zip(plans, states, strict=True) if state is not None]
                if not busy or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            rows = await session_rows(conn, list(plans))
        finally:
            await conn.close()
        return [account(v.plan, [v], rows[v.plan.session_id]) for v in started], busy

    def _results(self, accounts: Sequence[TurnAccount], busy: Sequence[str]) -> dict[str, Any]:
        s = self.settings
        kinds = {id(v): kind for kind, v in self.views}
        verdicts = Counter(a.verdict for a in accounts)
        baseline = next((x for x in self.samples if x.at >= s.warmup), self.samples[0])
        final = self.samples[-1]
        growth = final.total / baseline.total - 1 if baseline.total else 0.0
        unclosed = sum(1 for _, v in self.views if v.closed_at is None)
        refused = Counter(v.refused for _, v in self.views if v.refused is not None)
        not_sent = sum(1 for _, v in self.views if v.task_id is None and v.refused is None)
        failures = []
        if growth > s.max_growth:
            failures.append(f"RSS grew {growth:.1%} after the warm-up (limit {s.max_growth:.0%})")
        if verdicts["lost"] or verdicts["duplicated"]:
            failures.append(f"{verdicts['lost']} turns lost, {verdicts['duplicated']} duplicated")
        if busy or unclosed or not_sent:
            failures.append(
                f"{len(busy)} sessions left busy, {unclosed} streams not closed, {not_sent} messages not accepted"
            )
        return {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(s).items()},
            "turns": len(self.views),
            "by_kind": dict(Counter(kind for kind, _ in self.views)),
            "refused": dict(refused),
            "not_sent": not_sent,
            "stored_once": verdicts["stored once"],
            "lost": verdicts["lost"],
            "duplicated": verdicts["duplicated"],
            "busy": len(busy),
            "unclosed": unclosed,
            "problems": [_problem(kinds[id(a.views[0])], a) for a in accounts if a.why][:20],
            "rss_mb": [{"at_s": round(x.at), **{k: round(v / _MB, 1) for k, v in x.rss.items()}} for x in self.samples],
            "rss_baseline_mb": round(baseline.total / _MB, 1),
            "rss_final_mb": round(final.total / _MB, 1),
            "rss_peak_mb": round(max(x.total for x in self.samples) / _MB, 1),
            "rss_growth": round(growth, 4),
            "failures": failures,
        }


def _problem(kind: Kind, turn: TurnAccount) -> str:
    v = turn.views[0]
    seen = f"finish {v.finish_reasons}, errors {v.errors}, reconnects {v.reconnects}, task {v.task_id}"
    return f"{turn.verdict}: {kind} in session {turn.plan.session_id}: {turn.why} [{seen}]"


def _pick(rng: random.Random, s: SoakSettings) -> Kind:
    roll = rng.random()
    if roll < s.reconnect_share:
        return "reconnect"
    if roll < s.reconnect_share + s.cancel_share:
        return "cancel"
    return "turn"


def build_parser() -> argparse.ArgumentParser:
    defaults = SoakSettings()
    p = argparse.ArgumentParser(prog="python -m bench soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=defaults.duration, help="seconds of load (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=defaults.concurrency, help="concurrent streams (%(default)s)")
    p.add_argument("--warmup", type=float, default=defaults.warmup, help="seconds before the RSS baseline")
    p.add_argument("--sample-every", type=float, default=defaults.sample_every, help="seconds between RSS samples")
    p.add_argument("--words", type=int, default=defaults.words, help="words per reply (%(default)s)")
    p.add_argument("--delay-ms", type=float, default=defaults.delay_ms, help="pause between words (%(default)s)")
    p.add_argument("--turns-per-session", type=int, default=defaults.turns_per_session, help="turns per session")
    p.add_argument("--think", type=float, default=defaults.think, help="mean pause between a user's turns")
    p.add_argument("--max-growth", type=float, default=defaults.max_growth, help="allowed RSS growth (0.10: 10%%)")
    p.add_argument("--lease", type=float, default=defaults.lease_seconds, help="turn lease of the pods (seconds)")
    p.add_argument("--out", type=Path, default=defaults.out, help="results JSON (default: %(default)s)")
    return p


async def _soak(settings: SoakSettings) -> dict[str, Any]:
    rig = await asyncio.to_thread(Rig.started, pod_env={"COPILOT_TURN_LEASE_SECONDS": str(settings.lease_seconds)})
    try:
        async with Driver(lambda: [pod.url for pod in rig.pods], rig.token) as driver:
            return await Soak(settings, rig, driver).run()
    finally:
        await asyncio.to_thread(rig.close)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    reason = missing_servers()
    if reason:
        print(f"cannot run the soak: {reason}")
        return 2
    settings = SoakSettings(
        duration=args.duration,
        concurrency=args.concurrency,
        warmup=args.warmup,
        sample_every=args.sample_every,
        words=args.words,
        delay_ms=args.delay_ms,
        think=args.think,
        turns_per_session=args.turns_per_session,
        max_growth=args.max_growth,
        lease_seconds=args.lease,
        out=args.out,
    )
    started = time.time()
    results = asyncio.run(_soak(settings))
    results["date"] = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started))
    results["took_s"] = round(time.time() - started)
    settings.out.parent.mkdir(parents=True, exist_ok=True)
    settings.out.write_text(json.dumps(results, indent=1) + "\n")
    print(
        f"\n{results['turns']} turns {results['by_kind']}: {results['stored_once']} stored once, "
        f"{results['lost']} lost, {results['duplicated']} duplicated, {results['busy']} sessions left busy, "
        f"{results['unclosed']} streams not closed; refused: {results['refused'] or 'none'}"
    )
    print(
        f"RSS of the pods: {results['rss_baseline_mb']} MB after the warm-up, {results['rss_final_mb']} MB at the "
        f"end ({results['rss_growth']:+.1%}), peak {results['rss_peak_mb']} MB"
    )
    for problem in results["problems"]:
        print(problem)
    print(f"results: {settings.out}")
    if results["failures"]:
        print("FAILED: " + "; ".join(results["failures"]))
        return 1
    print("passed")
    return 0
