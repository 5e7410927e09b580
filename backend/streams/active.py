"""The session's pointer to its running turn: claimed with SET NX, released only by the turn that holds it.

A pointer is a lease with a TTL, so a turn whose pod vanished cannot block its session forever. The claim also
says whether the session has writes waiting for Postgres (`store/pending.py`, a key of the same slot), so the
append that follows it needs no round trip of its own to ask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
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
        claimed = int(await self._claim(keys=_claim_keys(session_id), args=[turn_id, self._lease_ms]))
        return _claim_from(claimed)

    async def claim_along(
        self, session_id: UUID, turn_id: str, along: Sequence[redis_batch.Group]
    ) -> tuple[Claim | None, list[list[Any]]]:
        """`claim` in one round trip with the reads of `along` (groups of other slots: their order against the claim
        does not matter); the claim and the replies of each group. When a group fails, a claim made is given back
        before the error is raised."""

        def queue(pipe: Pipeline) -> None:
            redis_batch.call(pipe, self._claim, _claim_keys(session_id), [turn_id, self._lease_ms])

        group = redis_batch.Group(queue, (self._claim,))
        (claimed, *_), *replies = await redis_batch.send(
            self._redis, group, *along, raise_on_error=False, ordered=False
        )
        if isinstance(claimed, Exception):
            raise claimed
        claim = _claim_from(int(claimed))
        try:
            redis_batch.raise_first_error(replies)
        except BaseException:
            if claim is not None:
                await self.release(session_id, turn_id)
            raise
        return claim, replies

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


def _claim_keys(session_id: UUID) -> list[str]:
    """The claim script's keys: the pointer, and the session's writes waiting for Postgres (one slot)."""
    return [keys.active_turn(session_id), keys.session_pending_writes(session_id)]


def _claim_from(claimed: int) -> Claim | None:
    """The claim script's reply: 0 when another turn holds the pointer, 2 when writes wait for Postgres."""
    return None if claimed == 0 else Claim(pending_writes=claimed == 2)
