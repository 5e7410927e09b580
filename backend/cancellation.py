"""Honouring cancellations that a library swallowed.

On Python 3.11, `asyncio.wait_for` (redis-py sends every command through it) can drop a cancellation that lands
just as the command completes; the task still counts the request. Long-running loops call `check_cancelled()`
each round so a pod's shutdown never waits on them forever.
"""

from __future__ import annotations

import asyncio


def check_cancelled() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
