"""Publishing one turn's chunks: followers on this pod read them from memory, Redis gets them in batches.

Every chunk gets its stream entry id when it is emitted (`<base>-1`, `<base>-2`, …, see `streams/turns.py`: the
turn's stream is new and empty when its publisher starts, so these ids are the stream's own and cursors mean the
same on every pod). Followers on this pod (the request that started the turn, a reconnect that lands here) are
served from the publisher's log at once, without a Redis read per chunk; text and tool-input deltas that come
faster than they are taken or written are merged into one entry. The log keeps only what Redis lacks or a follower
here has yet to take: a reply's memory does not grow with its length, and a reconnect here with an older cursor
reads the turn's Redis Stream, as on any other pod. The pod's `ChunkWriter` writes the log to the
turn's Redis Stream together with every other turn's, at most once per window (`chunk_writer.py`); followers on
other pods and replays read the stream, at most one window behind. Chunks that only mark a boundary (`start`,
`start-step`, `finish-step`) ask for no write of their own: they go with the next chunk that does, so the write
a quiet pod makes at once carries a turn's first token rather than its `start`.

Writing with explicit ids also makes a retried write idempotent: an entry whose write did land is not added
twice. The end is written atomically with the last chunks (`TurnRegistry.finish`), at once, and `finish` is held back
until then, here and in Redis: the end's round trip also carries the last step's cache update, so a client that
reads the session on `finish` finds its reply, and `finish` and the end reach every follower together.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Callable, Sequence

from backend.chat import protocol as p
from backend.chat.chunk_writer import ChunkWriter
from backend.chat.watchdogs import Heartbeat
from backend.redis_batch import Group
from backend.streams.turns import ChunkWrite, Published, TurnStatus, cursor_base, position_of

log = logging.getLogger("copilot.publisher")

_MARKERS = (p.Start, p.StartStep, p.FinishStep)
"""Chunks that only mark where a message or step begins or ends: they ask for no write of their own but go to Redis
with the next chunk that does (or with the end). The writer writes at once after a quiet moment, then once per
window: spent on a turn's `start`, that first write left its first token a window behind on other pods."""


class TurnPublisher:
    def __init__(
        self, writer: ChunkWriter, turn_id: str, *, on_cancel_requested: Callable[[], None] | None = None
    ) -> None:
        self._writer = writer
        self._registry = writer.registry
        self._on_cancel_requested = on_cancel_requested
        self.last_write = 0.0
        """Event-loop time of the last write to Redis (each write also says whether a stop was asked for)."""
        self.turn_id = turn_id
        self._id_prefix = f"{cursor_base(turn_id)}-"
        """Every entry id of the turn is this and its position (`streams/turns.py: entry_id`), hashed once; ids are
        made when handed out, not kept (a long reply's log holds its payloads only)."""
        self._payloads: list[bytes] = []
        """The log: the payloads of the entries from position `_dropped + 1` on, in order."""
        self._dropped = 0
        """How many of the first entries the log no longer keeps (in Redis, and taken by every follower here)."""
        self._followers: weakref.WeakSet[_Follower] = weakref.WeakSet()
        """This pod's followers, each with the position of the last entry it took."""
        self._written = 0
        """How many of the log's entries are in Redis."""
        self._sealed = 0
        """How many of the log's entries have been sent to Redis at least once (written or in flight): their
        content is fixed, a retry must write the same."""
        self._delivered = 0
        """How many of the log's entries a follower on this pod has taken."""
        self._held: int | None = None
        """The position of `finish` in the log: it and what follows are shown and written with the end only."""
        self._last: p.Chunk | None = None
        self._changed = asyncio.Event()
        """Set (and replaced) whenever the log grows or the turn ends: wakes this pod's followers."""
        self._closed = False
        """No more writes by the writer: the turn is ending here, or another pod ended it."""
        self.ended = False
        """The turn's end is decided: the log is complete (or, if `taken_over`, continues in Redis only)."""
        self.taken_over = False
        """Another pod ended the turn (this pod's lease had lapsed): its closing entries are only in Redis."""

    def emit(self, chunk: p.Chunk) -> None:
        if type(chunk) is p.Finish and self._held is None:
            self._held = self._length()
        merged = _merged(self._last, chunk) if self._length() > max(self._sealed, self._delivered) else None
        if merged is not None:
            # The previous delta is still unseen by anyone: extend it instead of adding an entry.
            chunk = merged
            self._payloads[-1] = p.to_json(chunk)
        else:
            self._payloads.append(p.to_json(chunk))
        self._last = chunk
        if not self._closed and type(chunk) not in _MARKERS:
            self._writer.schedule(self)
        self._notify()

    async def close(self, status: TurnStatus, *, before: Sequence[Group] = (), along: Sequence[Group] = ()) -> bool:
        """Write what is unwritten together with the end, atomically (with `before` and `along`, Redis work of other
        slots, in the same round trip: see `TurnRegistry.finish`); False if the turn could not be ended here:
        someone else ended it (its owner's lease had expired and another pod closed it), or its keys are gone (a
        Redis flush or restart). Nothing more is written then. Only in the first case do this pod's followers
        need Redis (`taken_over`); in the second the log here is the whole message and nobody else will end it."""
        self._closed = True
        try:
            await self._writer.settle(self)
            start = self._written
            stop = self._sealed = self._length()
            ended = await self._registry.finish(
                self.turn_id,
                status,
                self._payloads[start - self._dropped :],
                ids=self._ids(start, stop),
                before=before,
                along=along,
            )
            self._written = stop
            if not ended:
                self.taken_over = await self._registry.info(self.turn_id) is not None
                log.warning(
                    "turn %s %s; its end is not in Redis",
                    self.turn_id,
                    "was ended by another pod" if self.taken_over else "lost its keys in Redis",
                )
            return ended
        except BaseException:
            self.taken_over = True  # followers here fall back to whatever Redis has; they never hang
            raise
        finally:
            self.ended = True
            self._notify()

    def abandon(self) -> None:
        """The turn's task ended without closing the publisher (cancelled before it started): stop, and send this
        pod's followers to Redis, where whoever reaps the turn writes its end."""
        if not self.ended:
            self._closed = True
            self._writer.forget(self)
            self.taken_over = self.ended = True
            self._notify()

    # --- the writer's side ------------------------------------------------------------------------------
    def take_unwritten(self) -> ChunkWrite | None:
        """The entries Redis has not confirmed, for the writer to send (None: nothing to write, or no longer
        written by the writer); their content is fixed from now on."""
        start, stop = self._written, self._length() if self._held is None else self._held
        if self._closed or start >= stop:
            return None
        self._sealed = max(self._sealed, stop)
        chunks = self._payloads[start - self._dropped : stop - self._dropped]
        return ChunkWrite(self.turn_id, chunks, self._ids(start, stop), set_expiry=start == 0)

    def written(self, write: ChunkWrite, outcome: Published) -> None:
        """Redis answered `write` (taken by `take_unwritten`)."""
        self.last_write = asyncio.get_running_loop().time()
        if outcome == "ended":
            log.warning("turn %s was ended elsewhere; its publisher stops writing", self.turn_id)
            self._closed = True
            return
        self._written += len(write.chunks)  # the only write of this turn in flight, and `close` waits for it
        self._drop_taken()
        if outcome == "cancel_requested" and self._on_cancel_requested is not None:
            self._on_cancel_requested()

    # --- this pod's followers ---------------------------------------------------------------------------
    def follow(self, *, after: str, heartbeat_seconds: float) -> AsyncIterator[tuple[str, bytes | None]]:
        """This pod's view of the turn: entries after cursor `after` (`"0"`: from the start), live until its end;
        `("", None)` after `heartbeat_seconds` of silence. The caller checks `serves(after)` first, and `taken_over`
        when the entries end. The log keeps what the follower has yet to take from this call on."""
        follower = _Follower(position_of(self.turn_id, after) or 0)
        if follower.position < self._dropped:
            raise LookupError(f"turn {self.turn_id}: the entries after {after!r} are no longer kept here")
        self._followers.add(follower)  # weakly: a follower never iterated (nor closed) holds nothing once collected
        return self._entries(follower, heartbeat_seconds)

    async def _entries(self, follower: _Follower, heartbeat_seconds: float) -> AsyncIterator[tuple[str, bytes | None]]:
        heartbeat = Heartbeat(heartbeat_seconds, self._notify)
        try:
            while True:
                changed = self._changed
                while (position := follower.position) < self._shown():
                    follower.position = position = position + 1
                    self._delivered = max(self._delivered, position)
                    yield f"{self._id_prefix}{position}", self._payloads[position - 1 - self._dropped]
                    heartbeat.touch()
                if self.ended:
                    return
                if heartbeat.due:
                    heartbeat.touch()
                    yield "", None
                    continue
                await changed.wait()
        finally:
            heartbeat.cancel()
            self._followers.discard(follower)

    def serves(self, after: str) -> bool:
        """Whether `follow(after=…)` can start at `after`: a cursor this publisher handed out (or the start)."""
        position = position_of(self.turn_id, after)
        return position is not None and self._dropped <= position <= self._shown()

    def _length(self) -> int:
        """How many entries the turn has emitted (the position of the last one)."""
        return self._dropped + len(self._payloads)

    def _shown(self) -> int:
        """How many of the log's entries this pod's followers may take: all but a `finish` not yet ended with."""
        return self._length() if self._held is None or self.ended else self._held

    def _drop_taken(self) -> None:
        """Stop keeping the entries that Redis holds and every follower here has taken. Until the first follower has
        taken some, nothing: the request that started the turn follows it from the start, a moment later."""
        keep_from = min(self._written, self._delivered, *(f.position for f in self._followers))
        if keep_from > self._dropped:
            del self._payloads[: keep_from - self._dropped]
            self._dropped = keep_from

    def _ids(self, start: int, stop: int) -> list[str]:
        """The entry ids of the log's entries `start` to `stop` (positions from 1)."""
        prefix = self._id_prefix
        return [f"{prefix}{position}" for position in range(start + 1, stop + 1)]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


class _Follower:
    __slots__ = ("__weakref__", "position")

    def __init__(self, position: int) -> None:
        self.position = position
        """The position of the last entry this follower took."""


def _merged(last: p.Chunk | None, chunk: p.Chunk) -> p.Chunk | None:
    """`last` and `chunk` as one chunk, if both are deltas of the same part (text, or a tool call's input)."""
    if type(chunk) is p.TextDelta and type(last) is p.TextDelta and last.id == chunk.id:
        return p.TextDelta(id=chunk.id, delta=last.delta + chunk.delta)
    if type(chunk) is p.ToolInputDelta and type(last) is p.ToolInputDelta and last.tool_call_id == chunk.tool_call_id:
        text = last.input_text_delta + chunk.input_text_delta
        return p.ToolInputDelta(tool_call_id=chunk.tool_call_id, input_text_delta=text)
    return None
