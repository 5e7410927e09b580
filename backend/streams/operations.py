"""Long-running operations on Redis: the record of each one, the lease lock that keeps it from running twice,
and the deadlines after which an unfinished one is failed.

An operation moves `pending → completing → completed | failed` through compare-and-set scripts, so a duplicate
completion (a retried webhook, a redelivered stream entry) changes nothing, and a completion whose handler died
midway can be taken over once its claim is stale.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import orjson
from redis.asyncio import Redis

from backend import keys

OperationStatus = Literal["pending", "completing", "completed", "failed"]

_RECORD_TTL_MS = 7 * 86_400_000

_CLAIM = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 'missing' end
local stale = status == 'completing' and tonumber(redis.call('HGET', KEYS[1], 'claimed_at')) < tonumber(ARGV[2])
if status == 'pending' or stale then
  redis.call('HSET', KEYS[1], 'status', 'completing', 'claimed_at', ARGV[1])
  return 'claimed'
end
return status
"""

_SETTLE = """
if redis.call('HGET', KEYS[1], 'status') ~= 'completing' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'settled_at', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Operation:
    operation_id: str
    session_id: UUID
    user_id: str
    tool_call_id: str
    tool_name: str
    task_id: str
    """The turn id of the continuation: the stream a browser follows for this operation."""
    status: OperationStatus
    lock_key: str

    def to_fields(self) -> dict[Any, Any]:
        return {
            "session_id": str(self.session_id),
            "user_id": self.user_id,
            "tool_call_id": self.tool_call_id,
            "tool_name": self.tool_name,
            "task_id": self.task_id,
            "status": self.status,
            "lock_key": self.lock_key,
            "created_at": f"{time.time():.3f}",
        }


def lock_key_for(session_id: UUID, tool_name: str, arguments: dict[str, Any]) -> str:
    """One operation per session, tool and arguments at a time: a resend or a refresh that leads the model to the
    same call finds the lock held instead of starting the work again."""
    digest = hashlib.sha256(orjson.dumps(arguments, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    return keys.operation_lock(session_id, tool_name, digest)


class OperationStore:
    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._claim = redis.register_script(_CLAIM)
        self._settle = redis.register_script(_SETTLE)
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

    async def create(self, op: Operation, *, deadline: float) -> None:
        key = keys.operation(op.operation_id)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping=op.to_fields())
            pipe.pexpire(key, _RECORD_TTL_MS)
            pipe.zadd(keys.OPERATION_DEADLINES, {op.operation_id: deadline})
            await pipe.execute()

    async def get(self, operation_id: str) -> Operation | None:
        raw: Any = await self._redis.hgetall(keys.operation(operation_id))
        if not raw:
            return None
        d = {k.decode(): v.decode() for k, v in raw.items()}
        return Operation(
            operation_id=operation_id,
            session_id=UUID(d["session_id"]),
            user_id=d["user_id"],
            tool_call_id=d["tool_call_id"],
            tool_name=d["tool_name"],
            task_id=d["task_id"],
            status=d["status"],
            lock_key=d["lock_key"],
        )

    async def claim(self, operation_id: str, *, stale_after_seconds: float) -> str:
        """Take the right to complete the operation: `claimed`, or why not (`missing`, `completed`, ...)."""
        now = time.time()
        result = await self._claim(
            keys=[keys.operation(operation_id)], args=[f"{now:.3f}", f"{now - stale_after_seconds:.3f}"]
        )
        return result.decode() if isinstance(result, bytes) else str(result)

    async def settle(self, operation_id: str, status: Literal["completed", "failed"]) -> bool:
        settled = bool(await self._settle(keys=[keys.operation(operation_id)], args=[status, f"{time.time():.3f}"]))
        await self._redis.zrem(keys.OPERATION_DEADLINES, operation_id)
        return settled

    async def postpone(self, operation_id: str, *, seconds: float) -> None:
        """Move an unfinished operation's deadline (it stays listed until settled)."""
        await self._redis.zadd(keys.OPERATION_DEADLINES, {operation_id: time.time() + seconds}, xx=True)

    async def overdue(self, *, limit: int = 100) -> list[str]:
        ids: Any = await self._redis.zrangebyscore(keys.OPERATION_DEADLINES, "-inf", time.time(), start=0, num=limit)
        return [i.decode() for i in ids]
