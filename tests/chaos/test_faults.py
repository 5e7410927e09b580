"""Nothing is lost under faults: each scenario runs 20 streaming turns on two pods, injects one fault, and checks
the figures (docs/reliability.md): every turn stored once, none lost or duplicated, no session left busy, every
stream closed in time.

Every scenario asserts its targets; none is expected to fail.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import asyncpg
import pytest

from tests.chaos.accounting import Figures
from tests.chaos.driver import Driver
from tests.chaos.harness import POD_ENV, Rig
from tests.chaos.scenario import Run, text_turn

pytestmark = pytest.mark.slow

TURNS = 20
LEASE = float(POD_ENV["COPILOT_TURN_LEASE_SECONDS"])
IDLE_TIMEOUT = float(POD_ENV["COPILOT_LLM_IDLE_TIMEOUT_SECONDS"])
SHUTDOWN_GRACE = float(POD_ENV["COPILOT_SHUTDOWN_GRACE_SECONDS"])
OUTAGE = 10.0


def assert_nothing_lost(figures: Figures, *, close_within: float) -> None:
    """The targets every scenario shares."""
    why = "\n".join(figures.problems)
    assert figures.started == TURNS, why
    assert figures.lost == 0, why
    assert figures.duplicated == 0, why
    assert figures.stored_once == TURNS, why
    assert figures.busy == 0, why
    assert figures.unclosed == 0, why
    assert figures.longest_close_s <= close_within, f"a stream closed {figures.longest_close_s:.1f}s after the fault"


# --- pods ----------------------------------------------------------------------------------------------------


async def test_pod_sigkill_mid_stream(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """A pod dies with its turns streaming: the other pod closes them as interrupted within the lease, their
    clients reconnect there and get the end; the turns of the other pod go on."""
    messages = [text_turn(f"k{i}", 150, 40) for i in range(TURNS)]
    run = await Run.begin(up, driver, "pod SIGKILL mid-stream", messages)
    # Well into the reply: a kill within the first publish window (250 ms) can leave nothing of the text in Redis,
    # and then no reply is stored at all (docs/reliability.md, "Known gaps").
    await run.streaming(deltas=20)
    run.mark_fault()
    up.pods[0].process.signal(signal.SIGKILL)
    figures = await run.figures()
    record(figures)
    assert_nothing_lost(figures, close_within=LEASE * 2 + 5)
    killed = [v for v in run.views if v.plan.pod == 0]
    assert all(v.reconnects >= 1 and v.finish_reasons == ["error"] for v in killed)  # closed by the other pod
    survived = [v for v in run.views if v.plan.pod == 1]
    assert all(v.reconnects == 0 and v.text == v.plan.expected for v in survived)


async def test_pod_sigterm_mid_stream(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """An orchestrator stops a pod (SIGTERM) with long turns streaming: they get the shutdown grace, then are
    stopped and stored as interrupted, their streams end cleanly, and the process exits before 30 s. The turns of
    the other pod are short and end normally."""
    messages = [text_turn(f"t{i}", 600 if i % 2 == 0 else 100, 50) for i in range(TURNS)]
    run = await Run.begin(up, driver, "pod SIGTERM mid-stream", messages)
    await run.streaming(deltas=5)
    pod = up.pods[0].process
    terminated = run.mark_fault()
    pod.signal(signal.SIGTERM)
    try:
        code = await asyncio.to_thread(pod.wait, 40)
        exited = time.monotonic() - terminated
    finally:
        pod.stop()  # still draining after 40 s: the next scenario needs a working pod in its place
    figures = await run.figures()
    record(figures)
    assert code is not None and exited < 30, f"the pod was still running {exited:.0f}s after SIGTERM"
    assert_nothing_lost(figures, close_within=SHUTDOWN_GRACE + 5)


# --- Redis ---------------------------------------------------------------------------------------------------


async def test_redis_restart_without_persistence(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """Redis restarts empty mid-stream (turn streams, leases and pointers gone): the replies are stored once and
    every stream still ends within moments of its turn's end."""
    messages = [text_turn(f"r{i}", 100, 40) for i in range(TURNS)]
    run = await Run.begin(up, driver, "Redis restart without persistence", messages)
    await run.streaming(deltas=5)
    run.mark_fault()
    await asyncio.to_thread(up.redis.kill)
    await asyncio.to_thread(up.redis.start, empty=True)
    figures = await run.figures()
    record(figures)
    assert_nothing_lost(figures, close_within=4 + 3)  # the turns' remaining ~4 s, then the end at once


async def test_redis_restart_keeps_one_turn_per_session(
    up: Rig, driver: Driver, record: Callable[[Figures], None]
) -> None:
    """After Redis restarted empty mid-turn, a second message to the session is still refused (409) while the
    first turn runs: never two turns at once, never a history of user, user, assistant, assistant."""
    messages = [text_turn(f"d{i}", 100, 40) for i in range(TURNS)]
    run = await Run.begin(up, driver, "Redis restart, then a second message", messages)
    await run.streaming(deltas=5)
    run.mark_fault()
    await asyncio.to_thread(up.redis.kill)
    await asyncio.to_thread(up.redis.start, empty=True)
    await run.send_again('[[mock:text content="second"]]')
    figures = await run.figures()
    record(figures)
    refused = [v.refused for v in run.extra]
    assert figures.second_turns == 0, f"second messages answered: {refused}"
    assert all(r is not None and r.startswith("409") for r in refused), refused
    assert_nothing_lost(figures, close_within=60)


async def test_redis_down_10s(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """Redis is unreachable for 10 s and comes back with its data: turns that end during the outage and turns that
    outlast it are stored once, and every stream ends."""
    messages = [text_turn(f"o{i}", 150 if i % 2 == 0 else 400, 40) for i in range(TURNS)]
    run = await Run.begin(up, driver, "Redis down 10 s", messages)
    await run.streaming(deltas=5)
    run.mark_fault()
    await asyncio.to_thread(up.redis.stop, save=True)
    await asyncio.sleep(OUTAGE)
    await asyncio.to_thread(up.redis.start, empty=False)
    figures = await run.figures()
    record(figures)
    assert_nothing_lost(figures, close_within=16 + 5)  # the long turns end ~16 s after the fault


# --- Postgres ------------------------------------------------------------------------------------------------


async def test_postgres_down_10s(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """Postgres is down for 10 s while the turns end: each reply is stored once when it is back, nothing lost."""
    messages = [text_turn(f"p{i}", 150, 40) for i in range(TURNS)]
    run = await Run.begin(up, driver, "Postgres down 10 s", messages)
    await run.streaming(deltas=5)
    run.mark_fault()
    await asyncio.to_thread(up.postgres.stop)
    await asyncio.sleep(OUTAGE)
    await asyncio.to_thread(up.postgres.start)
    figures = await run.figures(settle=30)
    record(figures)
    assert_nothing_lost(figures, close_within=OUTAGE + 10)


async def test_cancel_while_the_reply_is_stored(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """Stop is pressed as the reply ends, while Postgres is slow to store it: the reply the user saw must still be
    stored once (complete, or marked interrupted). The soak met this once in about 600 cancels; a lock on the
    messages table makes it happen every time."""
    messages = [text_turn(f"x{i}", 10, 20) for i in range(TURNS)]
    run = await Run.begin(up, driver, "cancel while the reply is stored", messages)
    await run.streaming(deltas=1)  # every user message is stored
    conn = await asyncpg.connect(up.postgres.dsn)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE chat_messages IN EXCLUSIVE MODE")  # the replies' saves wait
            await run.shown_whole()  # its `finish` waits for the save the lock holds
            run.mark_fault()
            cancels = [
                asyncio.create_task(
                    driver.request("POST", p.pod + 1, f"/api/chat/sessions/{p.session_id}/cancel", p.user)
                )
                for p in run.plans
            ]
            await asyncio.sleep(1.0)  # the owners act on the cancel while the saves wait
    finally:
        await conn.close()
    await asyncio.gather(*cancels)
    figures = await run.figures()
    record(figures)
    assert_nothing_lost(figures, close_within=10)


# --- the model -----------------------------------------------------------------------------------------------


async def test_upstream_429(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """The provider answers 429 twice, then streams: the retries (before the first chunk) make it complete."""
    messages = [
        text_turn(f"q{i}", 40, 20, markers=f"[[mock:rate_limit times=2 key=q{i}x retry_after=0.2]] ")
        for i in range(TURNS)
    ]
    run = await Run.begin(up, driver, "upstream 429 (twice)", messages)
    figures = await run.figures()
    record(figures)
    assert_nothing_lost(figures, close_within=10)
    assert all(v.finish_reasons == ["stop"] and v.text == v.plan.expected for v in run.views)


async def test_upstream_5xx(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """The provider answers 503 twice, then streams: complete replies."""
    messages = [
        text_turn(f"e{i}", 40, 20, markers=f"[[mock:server_error times=2 key=e{i}x status=503]] ") for i in range(TURNS)
    ]
    run = await Run.begin(up, driver, "upstream 5xx (twice)", messages)
    figures = await run.figures()
    record(figures)
    assert_nothing_lost(figures, close_within=10)
    assert all(v.finish_reasons == ["stop"] and v.text == v.plan.expected for v in run.views)


async def test_upstream_cut(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """The provider's stream drops mid-reply: no retry after the first chunk (no duplicated text), the partial
    reply is stored and the client gets a clear error."""
    messages = [text_turn(f"c{i}", 60, 20, markers="[[mock:cut after=12]] ") for i in range(TURNS)]
    run = await Run.begin(up, driver, "upstream stream cut", messages)
    figures = await run.figures()
    record(figures)
    assert_nothing_lost(figures, close_within=10)
    assert all(v.errors and v.finish_reasons == ["error"] for v in run.views)


async def test_upstream_cut_mid_tool_arguments(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """The provider's stream drops while a tool call's arguments stream: the client must not be left with a tool
    call running forever."""
    messages = [
        text_turn(
            f"a{i}",
            5,
            20,
            markers='[[mock:cut after=8]] [[mock:tool name=get_current_time args={"timezone": "Europe/Paris"}]] ',
        )
        for i in range(TURNS)
    ]
    run = await Run.begin(up, driver, "upstream cut mid tool arguments", messages)
    figures = await run.figures()
    record(figures)
    assert_nothing_lost(figures, close_within=10)
    assert figures.open_tools == 0


async def test_upstream_stall(up: Rig, driver: Driver, record: Callable[[Figures], None]) -> None:
    """The provider goes silent mid-reply: the idle timeout ends the step, the partial reply is stored and the
    client gets a clear error."""
    messages = [text_turn(f"s{i}", 60, 20, markers="[[mock:stall after=12 seconds=30]] ") for i in range(TURNS)]
    run = await Run.begin(up, driver, "upstream stall", messages)
    figures = await run.figures()
    record(figures)
    assert_nothing_lost(figures, close_within=IDLE_TIMEOUT + 8)
    assert all(v.errors and v.finish_reasons == ["error"] for v in run.views)
