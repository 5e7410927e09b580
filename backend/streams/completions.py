"""Completions of long-running operations on a Redis Stream, consumed by every pod in one consumer group.

The webhook (and services sharing Redis, through `publish`) only append here. Each pod runs `consume`: it first
reclaims entries that another consumer read but never acknowledged for longer than `reclaim_idle` (that consumer
died), then reads new ones. An entry is acknowledged only after its handler returned, that is after the durable
state change; an entry delivered more than `max_deliveries` times goes to a dead-letter stream instead of being
retried forever; and a group lost to a Redis flush or restart is created again instead of failing in a loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from backend import keys
from backend.cancellation import check_cancelled

log = logging.getLogger("copilot.completions")


@dataclass(frozen=True, slots=True)
class Completion:
    operation_id: str
    success: bool
    result: Any = None
    error: str | None = None


class PoisonEntry(ValueError):
    """An entry that can never be processed (not a completion at all)."""


def parse(fields: dict[bytes, bytes]) -> Completion:
    try:
        body = orjson.loads(fields[b"completion"])
        return Completion(
            operation_id=str(body["operation_id"]),
            success=bool(body["success"]),
            result=body.get("result"),
            error=body.get("error"),
        )
    except (KeyError, TypeError, orjson.JSONDecodeError) as e:
        raise PoisonEntry(f"not a completion: {e}") from e


async def publish(redis: Redis, completion: Completion) -> str:
    """Append a completion (for the webhook, and for services that share Redis with the API pods)."""
    payload = orjson.dumps(
        {
            "operation_id": completion.operation_id,
            "success": completion.success,
            "result": completion.result,
            "error": completion.error,
        }
    )
    entry_id = await redis.xadd(keys.COMPLETIONS, {"completion": payload})
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


Handler = Callable[[Completion], Awaitable[None]]


class CompletionConsumer:
    def __init__(
        self,
        redis: Redis,
        *,
        consumer: str,
        reclaim_idle_seconds: float,
        max_deliveries: int,
        block_seconds: float = 1.0,
    ) -> None:
        self._redis = redis
        self._consumer = consumer
        self._reclaim_idle_ms = int(reclaim_idle_seconds * 1000)
        self._max_deliveries = max_deliveries
        # Below the Redis client's socket timeout (5 s in redis-py 8): a longer block fails the read with a timeout.
        self._block_ms = int(block_seconds * 1000)

    async def ensure_group(self) -> None:
        try:
            await self._redis.xgroup_create(keys.COMPLETIONS, keys.COMPLETIONS_GROUP, id="0", mkstream=True)
        except ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    async def consume(self, handler: Handler) -> None:
        """Process completions until cancelled."""
        await self.ensure_group()
        backoff = 0.5
        while True:
            check_cancelled()
            try:
                await self.step(handler)
                backoff = 0.5
            except ResponseError as e:
                # NOGROUP: the group is gone. UNBLOCKED (Redis 7): the stream was deleted under a blocked read.
                if not str(e).startswith(("NOGROUP", "UNBLOCKED")):
                    raise
                log.warning("completion group missing (Redis flushed or restarted?); creating it again")
                await self.ensure_group()
            except (RedisConnectionError, RedisTimeoutError, OSError):
                log.warning("Redis unreachable; completion consumer retries in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    async def step(self, handler: Handler) -> int:
        """One round: reclaim stale entries, then read new ones (blocking up to `block_seconds`)."""
        reply: Any = await self._redis.xautoclaim(
            keys.COMPLETIONS, keys.COMPLETIONS_GROUP, self._consumer, self._reclaim_idle_ms, start_id="0-0", count=10
        )
        handled = 0
        for entry_id, fields in reply[1]:
            if entry_id is None:  # Redis 6.2 lists an entry deleted meanwhile without its id; 7 drops it
                continue
            if fields is None:  # trimmed away meanwhile
                await self._ack(entry_id)
                continue
            await self._process(entry_id, fields, handler, await self._deliveries(entry_id))
            handled += 1
        fresh: Any = await self._redis.xreadgroup(
            keys.COMPLETIONS_GROUP, self._consumer, {keys.COMPLETIONS: ">"}, count=10, block=self._block_ms
        )
        for _, entries in fresh or []:
            for entry_id, fields in entries:
                await self._process(entry_id, fields, handler, 1)
                handled += 1
        return handled

    async def _process(self, entry_id: bytes, fields: dict[bytes, bytes], handler: Handler, deliveries: int) -> None:
        try:
            completion = parse(fields)
        except PoisonEntry as e:
            await self._dead_letter(entry_id, fields, str(e))
            return
        if deliveries > self._max_deliveries:
            await self._dead_letter(entry_id, fields, f"failed {deliveries - 1} times")
            return
        try:
            await handler(completion)
        except Exception:
            # Not acknowledged: it stays pending and is reclaimed after `reclaim_idle`, up to `max_deliveries`.
            log.exception("completion of operation %s failed (delivery %d)", completion.operation_id, deliveries)
            return
        await self._ack(entry_id)

    async def _deliveries(self, entry_id: bytes) -> int:
        pending: Any = await self._redis.xpending_range(
            keys.COMPLETIONS, keys.COMPLETIONS_GROUP, min=entry_id, max=entry_id, count=1
        )
        return int(pending[0]["times_delivered"]) if pending else 1

    async def _dead_letter(self, entry_id: bytes, fields: dict[bytes, bytes], reason: str) -> None:
        log.error("completion entry %s moved to the dead-letter stream: %s", entry_id.decode(), reason)
        dead: dict[Any, Any] = {**fields, b"reason": reason.encode(), b"entry": entry_id}
        await self._redis.xadd(keys.COMPLETIONS_DEAD, dead)
        await self._ack(entry_id)

    async def _ack(self, entry_id: bytes) -> None:
        await self._redis.xack(keys.COMPLETIONS, keys.COMPLETIONS_GROUP, entry_id)
