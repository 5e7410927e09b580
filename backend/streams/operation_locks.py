"""The fast path of a long-running operation's lock on Redis: one operation per session, tool and arguments.

`SET NX` with a TTL that the running work renews, released only by its holder. A call that finds the lock held
is answered without a Postgres round trip. The lock's truth, the operation's record, its claim and its deadline
are in Postgres (`store/operations.py`), so a Redis flush loses nothing here but this shortcut.
"""

from __future__ import annotations

import hashlib
from typing import Any
from uuid import UUID

import orjson
from redis.asyncio import Redis

from backend import keys

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def arguments_digest(arguments: dict[str, Any]) -> str:
    """The same arguments in any key order, the same digest."""
    return hashlib.sha256(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def lock_key_for(session_id: UUID, tool_name: str, arguments: dict[str, Any]) -> str:
    """One operation per session, tool and arguments at a time: a resend or a refresh that leads the model to the
    same call finds the lock held instead of starting the work again."""
    return keys.operation_lock(session_id, tool_name, arguments_digest(arguments))


class OperationLocks:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._release = redis.register_script(_RELEASE)

    async def lock(self, lock_key: str, operation_id: str, *, ttl_seconds: float) -> bool:
        return bool(await self._redis.set(lock_key, operation_id, nx=True, px=int(ttl_seconds * 1000)))

    async def holder(self, lock_key: str) -> str | None:
        value = await self._redis.get(lock_key)
        return value.decode() if isinstance(value, bytes) else value

    async def renew_lock(self, lock_key: str, operation_id: str, *, ttl_seconds: float) -> bool:
        if await self.holder(lock_key) != operation_id:
            return False
        return bool(await self._redis.pexpire(lock_key, int(ttl_seconds * 1000)))

    async def release_lock(self, lock_key: str, operation_id: str) -> None:
        await self._release(keys=[lock_key], args=[operation_id])
