"""Completions of long-running operations on a Redis Stream, consumed by every pod in one consumer group.

The webhook (and services sharing Redis, through `publish`) only append here. Each pod runs `consume`: it first
reclaims entries that another consumer read but never acknowledged for longer than `reclaim_idle` (that consumer
died), then reads new ones. An entry is acknowledged only after its handler returned, that is after the durable
state change; an entry delivered more than `max_deliveries` times goes to a dead-letter stream instead of being
retried forever; and a group lost to a Redis flush or restart is created again instead of failing in a loop.

Both streams are bounded (`XADD MAXLEN ~`, see `streams/limits.py`): the completions stream by a length far above
what is ever waiting, the dead-letter stream by the number of failures kept for inspection. A completion trimmed
before it was processed is logged when the consumer finds it gone; its operation fails at its deadline.

`publish_delivery` is the webhook's append: it records the delivery id and appends in one script, so a delivery
is enqueued at most once within the replay window and a failed append does not leave it recorded.
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


def _payload(completion: Completion) -> bytes:
    return orjson.dumps(
        {
            "operation_id": completion.operation_id,
            "success": completion.success,
            "result": completion.result,
            "error": completion.error,
        }
    )


async def publish(redis: Redis, completion: Completion, *, max_len: int) -> str:
    """Append a completion (for in-process operations, and for services that share Redis with the API pods),
    keeping the stream at about `max_len` entries."""
    entry_id = await redis.xadd(
        keys.COMPLETIONS, {"completion": _payload(completion)}, maxlen=max_len, approximate=True
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


# The delivery is recorded only together with its entry: if the XADD fails, the record goes too, so a retry of
# the delivery is accepted instead of being answered as a duplicate of something that was never enqueued.
_PUBLISH_DELIVERY = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
local added = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'completion', ARGV[4])
if type(added) == 'table' and added.err then
  redis.call('DEL', KEYS[1])
end
return added
"""


async def publish_delivery(
    redis: Redis, completion: Completion, *, delivery_id: str, remember_seconds: float, max_len: int
) -> str | None:
    """Append a completion the webhook received, unless its delivery id was seen in the last `remember_seconds`.

    Returns the new entry id, or None for a duplicate (nothing appended). The delivery key shares the stream's hash
    slot (`keys.webhook_delivery`), so this one script also runs on a Redis Cluster."""
    script = redis.register_script(_PUBLISH_DELIVERY)
    entry_id: Any = await script(
        keys=[keys.webhook_delivery(delivery_id), keys.COMPLETIONS],
        args=[completion.operation_id, int(remember_seconds * 1000), max_len, _payload(completion)],
    )
    if entry_id is None:
        return None
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


Handler = Callable[[Completion], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Backlog:
    """What waits on the completions path (for the metrics)."""

    lag: int
    """Entries not yet delivered to the consumer group (0 when the group does not exist yet)."""
    pending: int
    """Entries delivered to a consumer and not acknowledged."""
    dead_letters: int
    """Entries in the dead-letter stream."""


async def backlog(redis: Redis) -> Backlog:
    """The completions stream's backlog: `XINFO GROUPS` (Redis 7 reports the group's `lag`) and the dead letters."""
    lag = pending = 0
    try:
        groups = await redis.xinfo_groups(keys.COMPLETIONS)
    except ResponseError as e:
        if "no such key" not in str(e).lower():
            raise
        groups = []
    for group in groups:
        name = group.get("name")
        if name in (keys.COMPLETIONS_GROUP, keys.COMPLETIONS_GROUP.encode()):
            lag = int(group.get("lag") or 0)
            pending = int(group.get("pending") or 0)
    return Backlog(lag, pending, int(await redis.xlen(keys.COMPLETIONS_DEAD)))


class CompletionConsumer:
    def __init__(
        self,
        redis: Redis,
        *,
        consumer: str,
        reclaim_idle_seconds: float,
        max_deliveries: int,
        dead_letter_max_len: int,
        block_seconds: float = 1.0,
        on_dead_letter: Callable[[], None] | None = None,
    ) -> None:
        """`on_dead_letter` hears each entry moved to the dead-letter stream (metrics); cheap, never raising."""
        self._redis = redis
        self._on_dead_letter = on_dead_letter
        self._consumer = consumer
        self._reclaim_idle_ms = int(reclaim_idle_seconds * 1000)
        self._max_deliveries = max_deliveries
        self._dead_letter_max_len = dead_letter_max_len
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
        for entry_id in reply[2] if len(reply) > 2 else []:  # Redis 7: trimmed away, and dropped from the group
            _log_trimmed(entry_id)
        for entry_id, fields in reply[1]:
            if entry_id is None:  # Redis 6.2 lists an entry deleted meanwhile without its id; 7 drops it
                continue
            if not fields:  # Redis 6.2: trimmed away meanwhile (redis-py reads its missing fields as {})
                _log_trimmed(entry_id)
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
        await self._redis.xadd(keys.COMPLETIONS_DEAD, dead, maxlen=self._dead_letter_max_len, approximate=True)
        if self._on_dead_letter is not None:
            self._on_dead_letter()
        await self._ack(entry_id)

    async def _ack(self, entry_id: bytes) -> None:
        await self._redis.xack(keys.COMPLETIONS, keys.COMPLETIONS_GROUP, entry_id)


def _log_trimmed(entry_id: bytes) -> None:
    log.warning(
        "completion entry %s was trimmed before it was processed (more than completion_stream_max_len entries); "
        "its operation fails at its deadline",
        entry_id.decode(),
    )
