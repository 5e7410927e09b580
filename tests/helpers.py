"""Helpers the tests share."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 15, every: float = 0.02) -> None:
    """Until `condition()` is true; `AssertionError` once `within` seconds passed without it."""
    deadline = time.monotonic() + within
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {within}s: {condition}")
        await asyncio.sleep(every)
