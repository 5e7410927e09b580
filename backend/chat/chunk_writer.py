"""Writing the chunks of every turn running on this pod to Redis: one pipeline per window for the whole pod.

Each turn's publisher keeps its chunks in memory and serves this pod's followers from there (`publisher.py`); what
Redis gets, for followers on other pods and for replays, is written here. A publisher with unwritten chunks asks to
be written (`schedule`), and the writer sends every publisher that asked in one pipeline (one round trip on a single
Redis, one per node on a cluster): at once when the pod's last write is more than a window old, else when the
window has passed. A pod thus pays about one round trip per window however many turns it streams; a write per turn
per window was 100 round trips per window at 100 streams, most of the Redis traffic per token.

One write is in flight at a time, so a publisher never has two: each write covers its entries from the first one
Redis has not confirmed, and a write whose reply was lost is repeated with the same entry ids (which Redis then
skips). The end of a turn is not written here: `TurnPublisher.close` writes it at once, with the rest.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from backend.streams.turns import TurnRegistry

if TYPE_CHECKING:
    from backend.chat.publisher import TurnPublisher

log = logging.getLogger("copilot.publisher")


class ChunkWriter:
    def __init__(self, registry: TurnRegistry, *, window_seconds: float) -> None:
        self.registry = registry
        self._window = window_seconds
        self._due: dict[str, TurnPublisher] = {}
        """Publishers with chunks to write, by turn id, in the order they asked."""
        self._sending: set[str] = set()
        """The turns of the write in flight."""
        self._sent: asyncio.Future[None] | None = None
        """Done when the write in flight has its reply."""
        self._next_allowed = 0.0
        self._task: asyncio.Task[None] | None = None

    def schedule(self, publisher: TurnPublisher) -> None:
        """`publisher` has chunks Redis lacks: write them with the next write."""
        self._due[publisher.turn_id] = publisher
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="chunk-writer")

    async def settle(self, publisher: TurnPublisher) -> None:
        """Stop writing for `publisher` (its turn ends, and its end is written with the rest), once the write in
        flight, if it has one, has its reply."""
        self._due.pop(publisher.turn_id, None)
        while publisher.turn_id in self._sending and self._sent is not None:
            await asyncio.wait([self._sent])  # not `await self._sent`: a cancelled waiter must not cancel the write

    def forget(self, publisher: TurnPublisher) -> None:
        """Stop writing for `publisher` now (its turn was abandoned: whoever reaps it writes its end)."""
        self._due.pop(publisher.turn_id, None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._due:
                wait = self._next_allowed - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # publishers that ask meanwhile join this write
                    continue
                self._next_allowed = loop.time() + self._window
                await self._write()
        finally:
            self._task = None

    async def _write(self) -> None:
        due, self._due = self._due, {}
        batch = [(publisher, write) for publisher in due.values() if (write := publisher.take_unwritten()) is not None]
        if not batch:
            return
        self._sending = {publisher.turn_id for publisher, _ in batch}
        self._sent = asyncio.get_running_loop().create_future()
        try:
            outcomes = await self.registry.publish_many([write for _, write in batch])
        except Exception:
            log.exception("publishing %d turns failed; their chunks are written with their next write", len(batch))
            return
        finally:
            self._sending = set()
            self._sent.set_result(None)
        for (publisher, write), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error("turn %s: publishing failed (%s); its chunks go with its next write", write.turn_id, outcome)
            else:
                publisher.written(write, outcome)
