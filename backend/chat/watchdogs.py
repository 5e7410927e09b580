"""Timers for loops that take one chunk at a time: a reply's stream is read and followed token by token.

`asyncio.timeout` around each await costs a timer armed and cancelled per chunk (about 7 µs on the benchmark's
machine, as much as the rest of a follower's work per token). These arm one timer per period of silence instead:
each chunk only notes the time, and the timer, when it fires early, re-arms itself for the new due time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType

_EARLY = 0.001
"""The loop runs a timer up to its clock resolution early: a timer this close to its due time counts as due."""


class Heartbeat:
    """Says when `seconds` have passed without a `touch` (`due`), and calls `wake` then, so that a waiter can send
    a keep-alive. `cancel` when done."""

    def __init__(self, seconds: float, wake: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._seconds = seconds
        self._wake = wake
        self._last = self._loop.time()
        self.due = False
        self._handle = self._loop.call_at(self._last + seconds, self._check)

    def touch(self) -> None:
        """Something was sent: the silence starts again."""
        self._last = self._loop.time()
        self.due = False

    def cancel(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        due_at = self._last + self._seconds
        if self._loop.time() < due_at - _EARLY:
            self._handle = self._loop.call_at(due_at, self._check)
            return
        self.due = True
        self._last = self._loop.time()
        self._handle = self._loop.call_at(self._last + self._seconds, self._check)
        self._wake()


class ReadDeadline:
    """`asyncio.timeout` for a loop of reads: each read between `start()` and `stop()` must end within `seconds`,
    or the task is cancelled there and the block raises `TimeoutError`, as `asyncio.timeout` does. Time between
    reads (the caller handling what it read) does not count. Use as `with ReadDeadline(s) as d:` around the loop,
    inside the task that reads."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._started: float | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.expired = False

    def __enter__(self) -> ReadDeadline:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("ReadDeadline must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        return self

    def start(self) -> None:
        """A read begins."""
        self._started = self._loop.time()
        if self._handle is None:
            self._handle = self._loop.call_at(self._started + self._seconds, self._check)

    def stop(self) -> None:
        """The read ended."""
        self._started = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.expired and exc_type is asyncio.CancelledError and self._task.uncancel() <= self._cancelling:
            raise TimeoutError from exc

    def _check(self) -> None:
        self._handle = None
        if self._started is None or self.expired:
            return  # between reads: the next `start` arms the timer again
        due_at = self._started + self._seconds
        if self._loop.time() < due_at - _EARLY:
            self._handle = self._loop.call_at(due_at, self._check)
            return
        self.expired = True
        self._task.cancel()
