"""Appends Postgres did not take, kept in Redis until it answers again.

When Postgres is down, a write that must not be lost (a step of a reply) is pushed to the session's list of pending
writes instead, and the session is listed in an index the reconciler walks. Whoever stores them next (the
session's next append, or the reconciler on any pod) does so oldest first under a per-session lease, and removes
each entry only after its append committed: a pod that dies in between leaves the entry, and the write keys the
messages carry make storing it again write nothing twice.

The per-session list and lock share the session's hash tag; the index is one key of its own, so it is written by
separate commands, in an order that never leaves a non-empty list unlisted (push, then index; unindex, then look
again).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

import orjson
from redis.asyncio import Redis

from backend import keys
from backend.store.models import NewMessage

_POP_IF_FIRST = """
if redis.call('LINDEX', KEYS[1], 0) ~= ARGV[1] then return 0 end
redis.call('LPOP', KEYS[1])
return 1
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class PendingAppend:
    """One append as `SessionStore.append` would have made it: a step's messages and its usage."""

    messages: tuple[NewMessage, ...]
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "messages": [asdict(m) for m in self.messages],
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> PendingAppend:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(tuple(NewMessage(**m) for m in data["messages"]), data["prompt_tokens"], data["completion_tokens"])


class PendingWrites:
    def __init__(self, redis: Redis, *, lock_seconds: float = 30.0) -> None:
        self._redis = redis
        self._lock_ms = int(lock_seconds * 1000)
        self._pop_if_first = redis.register_script(_POP_IF_FIRST)
        self._unlock = redis.register_script(_UNLOCK)

    async def keep(self, session_id: UUID, append: PendingAppend) -> None:
        """Add `append` after the session's other pending writes."""
        await self._redis.rpush(keys.session_pending_writes(session_id), append.encode())
        await self._redis.zadd(keys.PENDING_SESSIONS, {str(session_id): time.time()}, nx=True)

    async def any(self, session_id: UUID) -> bool:
        return bool(await self._redis.exists(keys.session_pending_writes(session_id)))

    async def first(self, session_id: UUID) -> tuple[bytes, PendingAppend] | None:
        """The oldest pending write (raw, to hand back to `done`), or None."""
        raw = await self._redis.lindex(keys.session_pending_writes(session_id), 0)
        if raw is None:
            return None
        data = raw.encode() if isinstance(raw, str) else raw
        return data, PendingAppend.decode(data)

    async def done(self, session_id: UUID, raw: bytes) -> None:
        """Remove the oldest pending write if it is still `raw` (another pod may have stored and removed it)."""
        await self._pop_if_first(keys=[keys.session_pending_writes(session_id)], args=[raw])

    async def unlist_if_empty(self, session_id: UUID) -> None:
        """Take the session off the reconciler's list once it has nothing pending. A write kept meanwhile lists it
        again: either its own `keep` comes after this, or the look below finds it."""
        await self._redis.zrem(keys.PENDING_SESSIONS, str(session_id))
        if await self.any(session_id):
            await self._redis.zadd(keys.PENDING_SESSIONS, {str(session_id): time.time()}, nx=True)

    async def sessions(self, *, limit: int = 100) -> list[UUID]:
        """Sessions with pending writes, those waiting longest first."""
        members: Any = await self._redis.zrange(keys.PENDING_SESSIONS, 0, limit - 1)
        return [UUID(m.decode() if isinstance(m, bytes) else m) for m in members]

    async def lock(self, session_id: UUID) -> str | None:
        """Take the session's lease on storing its pending writes; the token to unlock with, or None if held."""
        token = secrets.token_hex(8)
        taken = await self._redis.set(keys.session_pending_lock(session_id), token, nx=True, px=self._lock_ms)
        return token if taken else None

    async def unlock(self, session_id: UUID, token: str) -> None:
        await self._unlock(keys=[keys.session_pending_lock(session_id)], args=[token])

    @property
    def lock_seconds(self) -> float:
        return self._lock_ms / 1000
