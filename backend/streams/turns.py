"""The turn registry on Redis: one Redis Stream of UI chunks per turn, a status record, and leases.

Any pod can follow any turn: the stream is the turn's whole output from its `start` chunk, entry ids are the SSE
cursors, and an `end` entry closes it. The owner writes its chunks with ids it chose (see `chat/publisher.py`),
so a retried write never adds an entry twice, and nothing is written once the turn no longer runs. The status
flip out of `running` happens once, in a Lua compare-and-set that also appends the last chunks and the `end`
entry, so exactly one writer (the owner, or whoever reaps a turn whose owner died) ends a message. Streams are
never trimmed by length (a replay always starts at `start`); they expire as a whole, together with their status
record, `ttl` after the last write. A small tombstone outlives them so a late reconnect can tell "expired" (410)
from "never existed" (404).

Entry ids name their turn: the owner numbers its chunks `<base>-1`, `<base>-2`, … where `base` is derived from the
turn id and lies centuries ahead of the clock, so entries Redis numbers itself (`*`: the `end` entry) continue the
same sequence. Whoever closes a turn whose owner died writes under the next base up (`closer_entry_ids`), past
every id the owner may have handed out from memory. A cursor handed out for one turn is thereby recognisable as
not being one of another turn's (`position_of`), which matters where a client resumes "the session's running
turn".

Running turns are listed in one sorted set scored by lease deadline: owners push their deadlines forward in one
pipelined call per pod, and finding turns whose owner died is a range query, never a key scan.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from backend import keys, redis_batch

TurnStatus = Literal["running", "completed", "failed", "cancelled", "interrupted"]
Published = Literal["written", "cancel_requested", "ended"]

_TOMBSTONE_TTL_MS = 7 * 86_400_000
_MAX_BLOCK_SECONDS = 1.0
"""Longest single XREAD of a follower; below the Redis client's socket timeout (redis-py 8 defaults to 5s)."""
_CLOSING_BLOCK_SECONDS = 0.05

_APPEND_ENTRIES = """
local function append(from)
  for i = from, #ARGV, 2 do
    local added = redis.pcall('XADD', KEYS[2], ARGV[i], 'c', ARGV[i + 1])
    -- An id already in the stream is an earlier attempt of this write whose reply was lost: nothing to add.
    if type(added) == 'table' and added.err and not string.find(added.err, 'equal or smaller', 1, true) then
      return added
    end
  end
end
"""

_PUBLISH = (
    _APPEND_ENTRIES
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local failed = append(3)
if failed then return failed end
if ARGV[1] == '1' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1 + redis.call('EXISTS', KEYS[3])
"""
)

_FINISH = (
    _APPEND_ENTRIES
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local failed = append(4)
if failed then return failed end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'ended_at', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'end', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""
)


# KEYS: events, meta, tombstone. ARGV: TTL, tombstone TTL, user, then the status record's fields and values.
_OPEN = """
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class TurnInfo:
    turn_id: str
    session_id: str
    user_id: str
    status: TurnStatus


def info_from(turn_id: str, raw: dict[bytes, bytes]) -> TurnInfo | None:
    """The turn's record as Redis returned it (`HGETALL` of its meta; empty: no such turn)."""
    if not raw:
        return None
    d = {k.decode(): v.decode() for k, v in raw.items()}
    return TurnInfo(turn_id, d["session_id"], d["user_id"], d["status"])  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ChunkWrite:
    """Chunks of one turn to append to its stream (`TurnRegistry.publish`)."""

    turn_id: str
    chunks: Sequence[bytes]
    ids: Sequence[str] | None = None
    """Their entry ids (None: Redis assigns them)."""
    set_expiry: bool = True
    """The turn's first write: its stream key is new and needs its expiry."""


class TurnVanished(LookupError):
    """The turn's status record disappeared while it was followed (Redis was flushed, or restarted without its
    data): no `end` entry will ever come."""


_BASE_FLOOR = 1 << 44
"""Milliseconds since the epoch in the year 2527: a base above it stays ahead of the clock, so `*` ids keep it."""


@functools.lru_cache(maxsize=4096)
def cursor_base(turn_id: str) -> int:
    """The first part of every entry id of `turn_id`'s stream (see the module docstring). Cached: followers check
    the ids they pass on per chunk, and a pod follows a few thousand turns at most at once."""
    digest = hashlib.blake2b(turn_id.encode(), digest_size=5).digest()
    return _BASE_FLOOR + int.from_bytes(digest, "big")


def entry_id(turn_id: str, position: int) -> str:
    """Id of the `position`-th entry (from 1) of the turn's stream."""
    return f"{cursor_base(turn_id)}-{position}"


def closer_entry_ids(turn_id: str, count: int) -> list[str]:
    """Ids for the entries of whoever ends a turn in its owner's place: the next base up. A follower on the dead
    owner's pod was handed the owner's ids from memory, possibly beyond what reached Redis; ids that continued the
    owner's sequence would collide with those cursors and be skipped by a client resuming from one."""
    return [f"{cursor_base(turn_id) + 1}-{i}" for i in range(1, count + 1)]


def is_owners_entry(turn_id: str, entry_id: str) -> bool:
    """An entry id the turn's owner chose (see `TurnPublisher`), as opposed to one of whoever closed the turn."""
    return entry_id.startswith(f"{cursor_base(turn_id)}-")


def position_of(turn_id: str, cursor: str) -> int | None:
    """How many entries of the turn lie at or before `cursor` (`"0"`: none); None for a cursor of another turn."""
    if cursor == "0":
        return 0
    base, _, position = cursor.partition("-")
    if base != str(cursor_base(turn_id)) or not position.isdigit():
        return None
    return int(position)


class TurnRegistry:
    def __init__(self, redis: Redis, *, ttl_seconds: int, lease_seconds: float) -> None:
        self._redis = redis
        self._ttl_ms = ttl_seconds * 1000
        self.lease_seconds = lease_seconds
        self._publish = redis.register_script(_PUBLISH)
        self._finish = redis.register_script(_FINISH)
        self._open = redis.register_script(_OPEN)

    # --- lifecycle -----------------------------------------------------------------------------------
    async def create(self, turn_id: str, session_id: str, user_id: str, *, lease: bool = True) -> None:
        """Open a turn's stream. `lease=False` for an operation's task stream, whose turn starts later
        (`adopt`): a follower waits on it without anyone holding a lease yet."""
        await redis_batch.send(self._redis, *self.opening(turn_id, session_id, user_id, lease=lease))

    def opening(self, turn_id: str, session_id: str, user_id: str, *, lease: bool = True) -> list[redis_batch.Group]:
        """`create` as groups of a batch sent with other Redis work (`redis_batch.send`); safe to send twice."""
        # A stream left over from an earlier turn of this id (its status record expired first) is not ours: dropped.
        keys_ = [keys.turn_events(turn_id), keys.turn_meta(turn_id), keys.turn_tombstone(turn_id)]
        fields = ["session_id", session_id, "user_id", user_id, "status", "running", "started_at", _now()]
        args = [self._ttl_ms, _TOMBSTONE_TTL_MS, user_id, *fields]

        def turn_keys(pipe: Pipeline) -> None:
            redis_batch.call(pipe, self._open, keys_, args)

        groups = [redis_batch.Group(turn_keys, (self._open,))]
        if lease:
            deadline = time.time() + self.lease_seconds
            groups.append(redis_batch.Group(lambda pipe: pipe.zadd(keys.TURN_LEASES, {turn_id: deadline})))
        return groups

    async def adopt(self, turn_id: str) -> None:
        """This pod starts the turn of a stream opened earlier: take its lease."""
        await self._redis.zadd(keys.TURN_LEASES, {turn_id: time.time() + self.lease_seconds})

    async def publish(
        self, turn_id: str, chunks: Sequence[bytes], *, ids: Sequence[str] | None = None, set_expiry: bool = True
    ) -> Published:
        """Append chunks (JSON) in one round trip, with their entry ids (default: Redis assigns them). `ended`, and
        nothing written, if the turn is no longer running (another pod ended it); the reply also says whether
        someone asked the turn to stop, so a streaming owner learns it without polling.

        The stream key exists from its first entry on, so the first write sets its expiry (`set_expiry`); after
        that `renew` keeps the turn's keys fresh and a write need not touch them."""
        (outcome,) = await self.publish_many([ChunkWrite(turn_id, chunks, ids, set_expiry)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def publish_many(self, writes: Sequence[ChunkWrite]) -> list[Published | Exception]:
        """`publish` for several turns in one pipeline (one round trip on a single Redis, one per node on a
        cluster); each write's outcome, or the error Redis answered it with."""
        outcomes: tuple[Published, ...] = ("ended", "written", "cancel_requested")
        scripts = (self._publish,)
        groups = [redis_batch.Group(functools.partial(self._queue_publish, write), scripts) for write in writes]
        replies = await redis_batch.send(self._redis, *groups, raise_on_error=False, ordered=False)
        return [reply if isinstance(reply, Exception) else outcomes[int(reply)] for (reply,) in replies]

    def _queue_publish(self, write: ChunkWrite, pipe: Pipeline) -> None:
        keys_ = [keys.turn_meta(write.turn_id), keys.turn_events(write.turn_id), keys.turn_cancel(write.turn_id)]
        args = [int(write.set_expiry), self._ttl_ms, *_entries(write.chunks, write.ids)]
        redis_batch.call(pipe, self._publish, keys_, args)

    async def finish(
        self,
        turn_id: str,
        status: TurnStatus,
        chunks: Sequence[bytes] = (),
        *,
        ids: Sequence[str] | None = None,
        before: Sequence[redis_batch.Group] = (),
        along: Sequence[redis_batch.Group] = (),
    ) -> bool:
        """Flip `running` to `status`, append the last chunks and the `end` entry, atomically, and drop the turn's
        lease; `before` and `along`: Redis work of other slots sent ahead of it and after it in the same round trip
        (`redis_batch.send`).

        False (and nothing written) if the turn had already been ended by someone else.
        """
        keys_ = [keys.turn_meta(turn_id), keys.turn_events(turn_id)]
        args = [status, _now(), self._ttl_ms, *_entries(chunks, ids)]

        def end(pipe: Pipeline) -> None:
            redis_batch.call(pipe, self._finish, keys_, args)

        replies = await redis_batch.send(
            self._redis,
            *before,
            redis_batch.Group(end, (self._finish,)),
            redis_batch.Group(lambda pipe: pipe.zrem(keys.TURN_LEASES, turn_id)),
            *along,
            raise_on_error=False,
        )
        ended = replies[len(before)][0]
        if isinstance(ended, Exception):
            # The end was refused (Redis out of memory, say) but the lease went with it: list the turn again, so
            # that whoever finds its lease lapsed closes it, as when the owner's pod dies.
            await self._redis.zadd(keys.TURN_LEASES, {turn_id: time.time() + self.lease_seconds})
            raise ended
        redis_batch.raise_first_error(replies)
        return bool(ended)

    # --- leases and cancellation ---------------------------------------------------------------------
    async def renew(self, turn_ids: Iterable[str]) -> None:
        """Push the lease deadlines of running turns (only those still listed) forward, and the expiry of their
        keys (publishing does not refresh it), in one round trip."""
        deadline = time.time() + self.lease_seconds
        mapping = {turn_id: deadline for turn_id in turn_ids}
        if not mapping:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.TURN_LEASES, mapping, xx=True)
            for turn_id in mapping:
                pipe.pexpire(keys.turn_meta(turn_id), self._ttl_ms)
                pipe.pexpire(keys.turn_events(turn_id), self._ttl_ms)
            await pipe.execute()

    async def expired(self, *, limit: int = 100) -> list[str]:
        """Running turns whose owner stopped renewing their lease."""
        ids: Any = await self._redis.zrangebyscore(keys.TURN_LEASES, "-inf", time.time(), start=0, num=limit)
        return [i.decode() for i in ids]

    async def lease_deadline(self, turn_id: str) -> float | None:
        """When the turn's lease lapses unless renewed; None when Redis holds no lease for it (not running, never
        leased, or forgotten by a flush)."""
        deadline = await self._redis.zscore(keys.TURN_LEASES, turn_id)
        return None if deadline is None else float(deadline)

    async def request_cancel(self, turn_id: str) -> None:
        await self._redis.set(keys.turn_cancel(turn_id), 1, px=self._ttl_ms)

    async def cancel_requested(self, turn_ids: Sequence[str]) -> set[str]:
        if not turn_ids:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for turn_id in turn_ids:
                pipe.exists(keys.turn_cancel(turn_id))
            flags = await pipe.execute()
        return {turn_id for turn_id, flag in zip(turn_ids, flags, strict=True) if flag}

    # --- reading -------------------------------------------------------------------------------------
    async def info(self, turn_id: str) -> TurnInfo | None:
        raw: dict[bytes, bytes] = await self._redis.hgetall(keys.turn_meta(turn_id))  # type: ignore[assignment]
        return info_from(turn_id, raw)

    def looking_up(self, turn_id: str) -> redis_batch.Group:
        """`info` as a group of a batch sent with other Redis work; its reply is read with `info_from`."""
        return redis_batch.Group(lambda pipe: pipe.hgetall(keys.turn_meta(turn_id)))

    async def owner_of_expired(self, turn_id: str) -> str | None:
        """The user of a turn whose stream has expired (None if no such turn ever existed)."""
        value = await self._redis.get(keys.turn_tombstone(turn_id))
        return value.decode() if isinstance(value, bytes) else value

    async def holds(self, turn_id: str, entry_id: str) -> bool:
        """Whether the turn's stream has the entry `entry_id` (a cursor a follower on the owner's pod was handed
        may be ahead of what reached Redis)."""
        entries: Any = await self._redis.xrange(keys.turn_events(turn_id), entry_id, entry_id, count=1)
        return bool(entries)

    async def chunks(self, turn_id: str) -> list[bytes]:
        """Every chunk of the turn so far (JSON), in order."""
        entries: Any = await self._redis.xrange(keys.turn_events(turn_id))
        return [fields[b"c"] for _, fields in entries if b"c" in fields]

    async def follow(
        self,
        turn_id: str,
        *,
        after: str = "0",
        heartbeat_seconds: float = 15.0,
        on_idle: Any = None,
    ) -> AsyncIterator[tuple[str, bytes | None]]:
        """Entries of the turn after cursor `after` ("0": from the start), live until its end.

        Yields `(entry_id, chunk_json)`, `("", None)` when nothing arrived for `heartbeat_seconds` (the caller sends
        a heartbeat), and returns after the `end` entry. `on_idle()` runs at each idle tick and may return True to
        stop following (for instance when the turn's owner died and it has just been closed). No read blocks
        forever, and there is no cap on how much is replayed.

        Whenever a read comes back empty (at most `_MAX_BLOCK_SECONDS` of silence) the turn's status is read, one
        round trip per quiet second and none per chunk: a turn that is no longer running is read to its end and
        left, and a turn whose status record is gone raises `TurnVanished`, so a follower learns within about a
        second that a Redis flush or restart took its stream.
        """
        events, meta = keys.turn_events(turn_id), keys.turn_meta(turn_id)
        cursor = after
        loop = asyncio.get_running_loop()
        heartbeat_at = loop.time() + heartbeat_seconds
        closing = False
        while True:
            # One XREAD never blocks longer than `_MAX_BLOCK_SECONDS`: a block longer than the client's socket
            # timeout fails the read with `TimeoutError` instead of returning empty.
            block = _CLOSING_BLOCK_SECONDS if closing else min(_MAX_BLOCK_SECONDS, heartbeat_at - loop.time())
            reply: Any = await self._redis.xread({events: cursor}, count=1000, block=max(1, int(block * 1000)))
            if not reply:
                if closing:
                    return
                status = await self._redis.hget(meta, "status")
                if status is None:
                    raise TurnVanished(turn_id)
                if status != b"running":
                    closing = True  # ended without an `end` entry after our cursor: read what is there, then stop
                    continue
                if loop.time() < heartbeat_at:
                    continue
                yield "", None
                if on_idle is not None and await on_idle():
                    closing = True  # read what the closing writer appended, then stop
                heartbeat_at = loop.time() + heartbeat_seconds
                continue
            entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
            for raw_id, fields in entries:
                cursor = raw_id.decode()
                if b"end" in fields:
                    return
                yield cursor, fields[b"c"]
            heartbeat_at = loop.time() + heartbeat_seconds


def _entries(chunks: Sequence[bytes], ids: Sequence[str] | None) -> list[str | bytes]:
    """Script arguments: entry id and chunk, pair after pair."""
    if ids is not None and len(ids) != len(chunks):
        raise ValueError("one entry id per chunk")
    args: list[str | bytes] = []
    for chunk_id, chunk in zip(ids or ["*"] * len(chunks), chunks, strict=True):
        args += (chunk_id, chunk)
    return args


def _now() -> str:
    return f"{time.time():.3f}"
