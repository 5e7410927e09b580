"""The per-period timers of a reply's read and follow loops behave as `asyncio.timeout` around each await would."""

from __future__ import annotations

import asyncio

import pytest

from backend.chat.watchdogs import Heartbeat, ReadDeadline


async def test_a_read_longer_than_the_deadline_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError), ReadDeadline(0.05) as deadline:
        deadline.start()
        await asyncio.sleep(1)
    assert deadline.expired


async def test_time_between_reads_does_not_count() -> None:
    with ReadDeadline(0.05) as deadline:
        for _ in range(3):
            deadline.start()
            await asyncio.sleep(0.01)
            deadline.stop()
            await asyncio.sleep(0.08)  # the caller handling a chunk: longer than the deadline
    assert not deadline.expired


async def test_many_quick_reads_outlast_the_deadline_without_timing_out() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with ReadDeadline(0.05) as deadline:
        while loop.time() - started < 0.2:
            deadline.start()
            await asyncio.sleep(0.01)
            deadline.stop()
    assert not deadline.expired


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    async def read() -> None:
        with ReadDeadline(10) as deadline:
            deadline.start()
            await asyncio.sleep(10)

    task = asyncio.create_task(read())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_task_is_not_left_cancelling_after_a_timeout() -> None:
    with pytest.raises(TimeoutError), ReadDeadline(0.02) as deadline:
        deadline.start()
        await asyncio.sleep(1)
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
    await asyncio.sleep(0.01)  # still runs: no cancellation pending


async def test_a_heartbeat_is_due_after_silence_and_wakes_the_waiter() -> None:
    woken = asyncio.Event()
    heartbeat = Heartbeat(0.05, woken.set)
    try:
        assert not heartbeat.due
        await asyncio.wait_for(woken.wait(), 1)
        assert heartbeat.due
    finally:
        heartbeat.cancel()


async def test_touching_postpones_the_heartbeat() -> None:
    woken = asyncio.Event()
    heartbeat = Heartbeat(0.06, woken.set)
    try:
        for _ in range(6):
            await asyncio.sleep(0.02)
            heartbeat.touch()
        assert not woken.is_set() and not heartbeat.due
        await asyncio.wait_for(woken.wait(), 1)
    finally:
        heartbeat.cancel()
