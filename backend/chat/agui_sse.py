"""A turn's stream entries as an AG-UI SSE body, encoded by `ag-ui-protocol`'s `EventEncoder`.

Every entry's events carry the entry's stream id as their cursor: the last event of an entry gets the `id:` line
(the events of one entry are written together), so a client that reconnects with `Last-Event-ID` or `?after=`
misses nothing and gets nothing twice. Heartbeats are SSE comments, as on the AI SDK stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Final

import orjson
from ag_ui.core import BaseEvent
from ag_ui.encoder import EventEncoder

from backend.chat.agui_stream import AguiTranslator

AGUI_HEADERS: Final = {
    "cache-control": "no-cache",
    "connection": "keep-alive",
    "x-accel-buffering": "no",
}

_HEARTBEAT = b": keep-alive\n\n"
_ENCODER = EventEncoder()


def encode(events: Sequence[BaseEvent], cursor: str | None = None) -> bytes:
    """`events` as SSE, the last one with `id: <cursor>` when given."""
    frames = [_ENCODER.encode(event) for event in events]
    if frames and cursor:
        frames[-1] = f"id: {cursor}\n{frames[-1]}"
    return "".join(frames).encode()


def _stream_id(cursor: str) -> tuple[int, int]:
    ms, _, seq = cursor.partition("-")
    return int(ms), int(seq or 0)


def agui_sse(
    entries: AsyncIterator[tuple[str, bytes | None]],
    translator: AguiTranslator,
    *,
    after: str | None = None,
    prelude: Sequence[BaseEvent] = (),
) -> AsyncIterator[bytes]:
    """The SSE body of a run: `RUN_STARTED`, `prelude` (a `MESSAGES_SNAPSHOT`), then the turn's `entries` (from its
    start) as events. Entries up to the cursor `after` are read but not sent (they rebuild what was open there,
    which is re-opened before the first entry sent). A stream that ends without the run's end gets `RUN_ERROR`."""

    async def frames() -> AsyncIterator[bytes]:
        yield encode([translator.started(), *prelude])
        skipping = after is not None and after != "0"
        boundary = _stream_id(after) if skipping and after else (0, 0)
        async for cursor, chunk in entries:
            if chunk is None:
                yield _HEARTBEAT
                continue
            if skipping and cursor and _stream_id(cursor) <= boundary:
                translator.translate(orjson.loads(chunk))
                continue
            reopened = translator.reopen() if skipping else []
            skipping = False
            events = [*reopened, *translator.translate(orjson.loads(chunk))]
            if events:
                yield encode(events, cursor or None)
        if tail := translator.close():
            yield encode(tail)

    return frames()
