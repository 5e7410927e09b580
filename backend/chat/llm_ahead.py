"""A streamed model call sent before its turn asks for it.

A turn's first model request used to wait for its user message to be stored: a Postgres commit and a cache update,
the slowest work before the first token (docs/benchmarks.md, issue 17 item 20). Sent ahead, it goes out while the
message is being stored, and the storage overlaps the model's own wait for its first token.

The turn takes the call up only if its own first request is the very same bytes: then it is the request the turn
would have sent, however the guess that built it was made. Anything else discards it: another body, a turn that
never reached its model call, an admission that failed. Discarding cancels the request (its connection is closed,
so the model stops) and swallows its failure, if it had one.

The reply's body is read from the moment its head is in, as the turn would have read it, and what comes before the
turn takes it up waits here: a connection that breaks meanwhile loses none of it (aiohttp raises a broken body's
error before it hands out what it had received), so a reply cut short keeps what arrived, as one read as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from backend.chat.llm_streams import StreamedReply, read_to_end

_closing: set[asyncio.Task[None]] = set()
"""Closes of discarded replies still running (the loop keeps only weak references to tasks)."""


class CallAhead:
    """One streamed call on its way: its body and the task that opens it (its reply's head in when it is done)."""

    def __init__(self, content: bytes, opening: asyncio.Task[StreamedReply]) -> None:
        self._content = content
        self._opening = opening
        self._settled = False
        opening.add_done_callback(_retrieve)

    @classmethod
    def send(cls, content: bytes, opening: Coroutine[Any, Any, StreamedReply]) -> CallAhead:
        """The call `opening` sends with body `content`, started now."""
        return cls(content, asyncio.ensure_future(_read_ahead(opening)))

    def take(self, content: bytes) -> asyncio.Task[StreamedReply] | None:
        """The call's opening if `content` is the body it sent and it is still on offer; the caller then owns its
        reply (and closes it). Any other body discards the call: the turn sends its own."""
        if self._settled:
            return None
        if content != self._content:
            self.discard()
            return None
        self._settled = True
        return self._opening

    def discard(self) -> None:
        """Cancel the call unless it was taken; idempotent."""
        if self._settled:
            return
        self._settled = True
        opening = self._opening
        if not opening.done():
            opening.cancel()
        elif not opening.cancelled() and opening.exception() is None:
            closing = asyncio.ensure_future(opening.result().close())
            _closing.add(closing)
            closing.add_done_callback(_closed)


async def _read_ahead(opening: Coroutine[Any, Any, StreamedReply]) -> StreamedReply:
    return _ReadAhead(await opening)


class _ReadAhead:
    """A reply whose body is read from the moment its head is in, until its turn takes it up; then the turn reads
    what was read meanwhile and goes on reading the body itself."""

    def __init__(self, reply: StreamedReply) -> None:
        self.request = reply.request
        self._reply = reply
        self._body = reply.chunks()
        self._read: deque[bytes] = deque()
        self._ended: BaseException | None = None
        """How the body ended while read ahead: `StopAsyncIteration` at its end, else its failure."""
        self._taken = False
        self._reading = asyncio.ensure_future(self._read_on())
        self._chunks = self._handed_over()

    async def _read_on(self) -> None:
        try:
            while not self._taken:
                self._read.append(await anext(self._body))
        except (Exception, StopAsyncIteration) as e:
            self._ended = e

    def chunks(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def _handed_over(self) -> AsyncIterator[bytes]:
        # The read under way is the last one ahead: it ends with the next bytes, the body's end or its failure.
        self._taken = True
        while True:
            while self._read:
                yield self._read.popleft()
            if self._reading.done():
                break
            await asyncio.wait([self._reading])
        if isinstance(self._ended, StopAsyncIteration):
            return
        if self._ended is not None:
            raise self._ended
        async for data in self._body:
            yield data

    async def drain(self) -> None:
        await read_to_end(self._chunks)

    async def close(self) -> None:
        self._reading.cancel()
        await self._reply.close()


def _retrieve(opening: asyncio.Task[StreamedReply]) -> None:
    # A failed call that nobody takes up is not an error of anyone's: its failure is read here, once, and dropped.
    if not opening.cancelled():
        opening.exception()


def _closed(closing: asyncio.Task[None]) -> None:
    _closing.discard(closing)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        closing.result()
