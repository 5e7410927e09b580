"""The session's pointer to its running turn: claimed with SET NX, released only by the turn that holds it.

A pointer is a lease with a TTL, so a turn whose pod vanished cannot block its session forever. The claim also
says whether the session has writes waiting for Postgres (`store/pending.py`, a key of the same slot), so the
append that follows it needs no round trip of its own to ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from backend import keys, redis_batch

_CLAIM = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 0 end
return 1 + redis.call('EXISTS', KEYS[2])
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Claim:
    """A claimed pointer."""

    pending_writes: bool
    """The session had writes waiting for Postgres when it was claimed."""


class ActiveTurns:
    def __init__(self, redis: Redis, *, lease_seconds: float) -> None:
        self._redis = redis
        self._lease_ms = int(lease_seconds * 1000)
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)

    async def claim(self, session_id: UUID, turn_id: str) -> Claim | None:
        """Point the session at `turn_id` unless it points at a turn already; None then."""
        keys_ = [keys.active_turn(session_id), keys.session_pending_writes(session_id)]
        claimed = int(await self._claim(keys=keys_, args=[turn_id, self._lease_ms]))
        return None if claimed == 0 else Claim(pending_writes=claimed == 2)

    async def current(self, session_id: UUID) -> str | None:
        value = await self._redis.get(keys.active_turn(session_id))
        return value.decode() if isinstance(value, bytes) else value

    async def release(self, session_id: UUID, turn_id: str) -> bool:
        return bool(await self._release(keys=[keys.active_turn(session_id)], args=[turn_id]))

    def queue_release(self, session_id: UUID, turn_id: str) -> redis_batch.Group:
        """`release` as a group of a batch (`redis_batch.send`)."""

        def queue(pipe: Pipeline) -> None:
            redis_batch.call(pipe, self._release, [keys.active_turn(session_id)], [turn_id])

        return redis_batch.Group(queue, (self._release,))
