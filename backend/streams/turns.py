"""The turn registry on Redis: one Redis Stream of UI chunks per turn plus a small status record.

Any pod can follow any turn: the stream is the turn's whole output from its `start` chunk, entry ids are the SSE
cursors, and an `end` entry closes it. The status flip out of `running` happens once (compare-and-set in Lua), so
exactly one owner writes the end. Streams are never trimmed by length (a replay always starts at `start`); they
expire as a whole, together with their status record, `ttl` after the last write.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from backend import keys
from backend.chat import protocol

TurnStatus = Literal["running", "completed", "failed", "cancelled", "interrupted"]

_END = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'ended_at', ARGV[2])
redis.call('XADD', KEYS[2], '*', 'end', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""


@dataclass(frozen=True, slots=True)
class TurnInfo:
    turn_id: str
    session_id: str
    user_id: str
    status: TurnStatus


class TurnRegistry:
    def __init__(self, redis: Redis, *, ttl_seconds: int) -> None:
        self._redis = redis
        self._ttl_ms = ttl_seconds * 1000
        self._end = redis.register_script(_END)

    async def create(self, turn_id: str, session_id: str, user_id: str) -> None:
        meta = keys.turn_meta(turn_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                meta,
                mapping={
                    "session_id": session_id,
                    "user_id": user_id,
                    "status": "running",
                    "started_at": f"{time.time():.3f}",
                },
            )
            pipe.pexpire(meta, self._ttl_ms)
            await pipe.execute()

    async def info(self, turn_id: str) -> TurnInfo | None:
        raw: dict[bytes, bytes] = await self._redis.hgetall(keys.turn_meta(turn_id))  # type: ignore[assignment]
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return TurnInfo(turn_id, d["session_id"], d["user_id"], d["status"])  # type: ignore[arg-type]

    async def publish(self, turn_id: str, payloads: Sequence[bytes]) -> None:
        """Append chunks (JSON) in one round trip, refreshing the expiry of the turn's keys."""
        events, meta = keys.turn_events(turn_id), keys.turn_meta(turn_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            for payload in payloads:
                pipe.xadd(events, {"c": payload})
            pipe.pexpire(events, self._ttl_ms)
            pipe.pexpire(meta, self._ttl_ms)
            await pipe.execute()

    async def end(self, turn_id: str, status: TurnStatus) -> bool:
        """Flip `running` to `status` and close the stream; False if someone else already ended the turn."""
        keys_ = [keys.turn_meta(turn_id), keys.turn_events(turn_id)]
        return bool(await self._end(keys=keys_, args=[status, f"{time.time():.3f}", self._ttl_ms]))

    async def follow(self, turn_id: str, *, after: str = "0", heartbeat_seconds: float = 15.0) -> AsyncIterator[bytes]:
        """SSE frames of the turn after cursor `after` ("0": from the start), live until its end, then `[DONE]`.

        Waits at most `heartbeat_seconds` per read and sends an SSE comment when nothing came, so a long silent
        tool never leaves a connection without traffic, and the loop never blocks forever.
        """
        events = keys.turn_events(turn_id)
        cursor = after
        block_ms = int(heartbeat_seconds * 1000)
        while True:
            reply: Any = await self._redis.xread({events: cursor}, count=500, block=block_ms)
            if not reply:
                yield protocol.heartbeat()
                continue
            entries: list[tuple[bytes, dict[bytes, bytes]]] = reply[0][1]
            for entry_id, fields in entries:
                cursor = entry_id.decode()
                if b"end" in fields:
                    yield protocol.DONE
                    return
                yield protocol.frame(fields[b"c"], cursor)
