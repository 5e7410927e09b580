"""The session's pointer to its running turn: claimed with SET NX, released only by the turn that holds it.

A pointer is a lease with a TTL, so a turn whose pod vanished cannot block its session forever.
"""

from __future__ import annotations

from uuid import UUID

from redis.asyncio import Redis

from backend import keys

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ActiveTurns:
    def __init__(self, redis: Redis, *, lease_seconds: float) -> None:
        self._redis = redis
        self._lease_ms = int(lease_seconds * 1000)
        self._release = redis.register_script(_RELEASE)

    async def claim(self, session_id: UUID, turn_id: str) -> bool:
        return bool(await self._redis.set(keys.active_turn(session_id), turn_id, nx=True, px=self._lease_ms))

    async def current(self, session_id: UUID) -> str | None:
        value = await self._redis.get(keys.active_turn(session_id))
        return value.decode() if isinstance(value, bytes) else value

    async def release(self, session_id: UUID, turn_id: str) -> bool:
        return bool(await self._release(keys=[keys.active_turn(session_id)], args=[turn_id]))
