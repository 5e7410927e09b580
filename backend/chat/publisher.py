"""Coalesced publishing of one turn's chunks: the turn never waits on Redis per token.

`emit` only buffers (merging consecutive text deltas of one part). A flusher task writes the buffer in one
pipelined round trip. The first chunk after a quiet period goes out at once (no added latency for the first
token); while chunks keep coming, writes happen at most once per `window`, so a fast model costs one round trip
per window instead of one per token.
"""

from __future__ import annotations

import asyncio
import logging

from backend.chat import protocol as p
from backend.streams.turns import TurnRegistry, TurnStatus

log = logging.getLogger("copilot.publisher")


class TurnPublisher:
    def __init__(self, registry: TurnRegistry, turn_id: str, *, window_seconds: float) -> None:
        self._registry = registry
        self._turn_id = turn_id
        self._window = window_seconds
        self._buffer: list[p.Chunk] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._flusher = asyncio.create_task(self._run())

    def emit(self, chunk: p.Chunk) -> None:
        last = self._buffer[-1] if self._buffer else None
        if type(chunk) is p.TextDelta and type(last) is p.TextDelta and last.id == chunk.id:
            self._buffer[-1] = p.TextDelta(id=chunk.id, delta=last.delta + chunk.delta)
        else:
            self._buffer.append(chunk)
        self._wake.set()

    async def close(self, status: TurnStatus) -> bool:
        """Write what is buffered together with the end, atomically; False if someone else ended the turn
        (its owner's lease had expired and another pod closed it), in which case nothing more is written."""
        self._closed = True
        self._wake.set()
        await asyncio.gather(self._flusher, return_exceptions=True)
        batch, self._buffer = self._buffer, []
        return await self._registry.finish(self._turn_id, status, [p.to_json(c) for c in batch])

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_allowed = 0.0
        while True:
            await self._wake.wait()
            if self._closed:
                return
            wait = next_allowed - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # chunks arriving meanwhile join this write
                if self._closed:
                    return  # `close` writes the buffer together with the end (clearing `_wake` would hang it)
            self._wake.clear()
            next_allowed = loop.time() + self._window
            try:
                await self._flush()
            except Exception:
                log.exception("turn %s: publishing failed; chunks stay buffered for the next write", self._turn_id)

    async def _flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            await self._registry.publish(self._turn_id, [p.to_json(c) for c in batch])
        except BaseException:
            self._buffer[:0] = batch
            raise
