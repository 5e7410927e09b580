"""Faults of the scale-out topology under load, measured: a Redis master killed (its replica is promoted) and a pod
killed behind the balancer. Clients behave like the chaos suite's (`tests/chaos/driver.py`): every request goes
through HAProxy, and a broken stream is resumed by task id with `Last-Event-ID`, wherever the balancer sends it.
Each test prints its figures (`-s`, or in the report of a failure) and checks what was stored in PostgreSQL with the
chaos suite's accounting: every turn stored once, or ended with a clear error before any text; nothing doubled."""

from __future__ import annotations

import asyncio
import time
import uuid
from types import SimpleNamespace
from typing import cast

from backend import keys
from tests.chaos.accounting import Figures
from tests.chaos.driver import ClientView, Driver, TurnPlan
from tests.chaos.harness import Rig
from tests.chaos.report import text_table
from tests.chaos.scenario import Run, text_turn
from tests.cluster.topology import Topology

LOAD = 12
"""Turns in flight when the fault strikes (each about 4 s long)."""


def _driver(topology: Topology) -> Driver:
    return Driver(lambda: [topology.url], topology.token)


def _as_rig(topology: Topology) -> Rig:
    """What the chaos `Run` needs of its rig: one entry point (the balancer) and where to count stored rows."""
    return cast(Rig, SimpleNamespace(pods=[topology.url], postgres=SimpleNamespace(dsn=topology.direct_database_url)))


async def _load(topology: Topology, driver: Driver, name: str) -> Run:
    messages = [text_turn(f"{name[:2]}{i}", 100, 40) for i in range(LOAD)]
    run = await Run.begin(_as_rig(topology), driver, name, messages, within=60)
    await run.streaming(deltas=5)
    return run


async def _wait_promoted(topology: Topology, replica: int, within: float = 30) -> float:
    """Until `replica` is a master and the cluster serves every slot again; when (monotonic)."""
    deadline = time.monotonic() + within
    while True:
        nodes = {int(n["port"]): n for n in topology.cluster_nodes()}
        if nodes.get(replica, {}).get("role") == "master":
            try:
                with topology.redis_node(replica) as node:
                    if node.cluster("info").get("cluster_state") == "ok":
                        return time.monotonic()
            except OSError:
                pass
        assert time.monotonic() < deadline, f"redis {replica} was not promoted within {within}s"
        await asyncio.sleep(0.05)


async def _first_turns_after(topology: Topology, driver: Driver, start: float, *, count: int = 6) -> float:
    """Start `count` new turns (new sessions, spread over the slots) and resend each until its reply completes;
    seconds from `start` until the last one did."""

    async def one(i: int) -> float:
        user = f"after-{uuid.uuid4().hex[:6]}-{i}"
        message, reply = text_turn(f"af{i}", 5, 5)
        while True:
            try:
                session_id = await driver.new_session(user, 0)
                break
            except Exception:
                await asyncio.sleep(0.1)  # the service refused while the cluster recovered: try again
        plan = TurnPlan(user, session_id, 0, message, reply)
        while True:
            view = ClientView(plan)
            await driver.follow(view, within=10)
            if view.text == reply and view.finish_reasons[-1:] == ["stop"]:
                return time.monotonic() - start
            await asyncio.sleep(0.1)

    async with asyncio.timeout(60):
        return max(await asyncio.gather(*(one(i) for i in range(count))))


def _report(figures: Figures, extra: dict[str, object]) -> str:
    measured = "\n".join(f"{name}: {value}" for name, value in extra.items())
    return text_table([figures.row()]) + "\n" + measured + "".join(f"\n{p}" for p in figures.problems)


async def test_a_redis_master_killed_under_load(cluster: Topology) -> None:
    async with _driver(cluster) as driver:
        run = await _load(cluster, driver, "redis master killed")
        # The master that holds the streams of most turns in flight (a third of them, give or take).
        streams = [cluster.master_of(keys.turn_events(str(v.task_id))) for v in run.views]
        master = max(set(streams), key=streams.count)
        replica = cluster.replica_of(master)
        killed_at = run.mark_fault()
        cluster.kill(f"redis-{master}")
        promoted_at = await _wait_promoted(cluster, replica)
        new_turns_s = await _first_turns_after(cluster, driver, promoted_at)
        figures = await run.figures(settle=20)
    ended_with_error = sum(1 for v in run.views if any(r == "error" for r in v.finish_reasons))
    extra = {
        "turns_on_the_killed_master": streams.count(master),
        "promoted_after_s": round(promoted_at - killed_at, 1),
        "new_turns_ok_after_promotion_s": round(new_turns_s, 1),
        "ended_with_error": ended_with_error,
    }
    print(_report(figures, extra))
    assert figures.started == LOAD
    assert (figures.lost, figures.duplicated, figures.busy, figures.unclosed) == (0, 0, 0, 0), figures.problems
    assert new_turns_s <= 5.0


async def test_a_pod_killed_behind_the_balancer(cluster: Topology) -> None:
    async with _driver(cluster) as driver:
        run = await _load(cluster, driver, "pod killed")
        run.mark_fault()
        cluster.kill("pod-1")
        figures = await run.figures(settle=20)
    lease = float(cluster.pod_environment()["COPILOT_TURN_LEASE_SECONDS"])
    resumed = sum(1 for v in run.views if v.reconnects)
    extra = {"resumed_elsewhere": resumed, "lease_s": lease}
    print(_report(figures, extra))
    assert figures.started == LOAD
    assert resumed > 0  # the killed pod had turns, and their clients came back through the balancer
    assert (figures.lost, figures.duplicated, figures.busy, figures.unclosed) == (0, 0, 0, 0), figures.problems
    # A dead pod's turns are closed once their lease is seen lapsed for 2/3 of a lease more (chat/lapses.py), by a
    # pod that looks every third of a lease: about two leases, plus the clients' reconnect pauses.
    assert figures.longest_close_s <= 2 * lease + 3
