"""The fast path of the operation lock on a real Redis (`backend/streams/operation_locks.py`)."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis

from backend.streams.operation_locks import OperationLocks, arguments_digest, lock_key_for

SESSION = uuid.UUID("00000000-0000-0000-0000-0000000000aa")
LOCK_KEY = lock_key_for(SESSION, "slow", {"x": 1})


def test_lock_key_is_per_session_tool_and_arguments() -> None:
    key = lock_key_for(SESSION, "generate_report", {"topic": "cats", "sections": 3})
    assert key.startswith(f"copilot:{{{SESSION}}}:op-lock:generate_report:")
    assert key == lock_key_for(SESSION, "generate_report", {"sections": 3, "topic": "cats"})  # order is irrelevant
    assert key.endswith(arguments_digest({"sections": 3, "topic": "cats"}))
    assert key != lock_key_for(SESSION, "generate_report", {"topic": "dogs", "sections": 3})
    assert key != lock_key_for(SESSION, "other_tool", {"topic": "cats", "sections": 3})
    assert key != lock_key_for(uuid.uuid4(), "generate_report", {"topic": "cats", "sections": 3})


async def test_lock_is_exclusive_and_released_only_by_its_holder(redis: Redis) -> None:
    locks = OperationLocks(redis)
    assert await locks.lock(LOCK_KEY, "op-1", ttl_seconds=10)
    assert not await locks.lock(LOCK_KEY, "op-2", ttl_seconds=10)
    assert await locks.holder(LOCK_KEY) == "op-1"
    await locks.release_lock(LOCK_KEY, "op-2")  # not the holder: nothing happens
    assert await locks.holder(LOCK_KEY) == "op-1"
    await locks.release_lock(LOCK_KEY, "op-1")
    assert await locks.holder(LOCK_KEY) is None
    assert await locks.lock(LOCK_KEY, "op-2", ttl_seconds=10)


async def test_lock_of_a_dead_holder_expires(redis: Redis) -> None:
    locks = OperationLocks(redis)
    assert await locks.lock(LOCK_KEY, "op-dead", ttl_seconds=0.3)
    assert not await locks.lock(LOCK_KEY, "op-new", ttl_seconds=10)
    await asyncio.sleep(0.4)  # nobody renewed it
    assert await locks.holder(LOCK_KEY) is None
    assert await locks.lock(LOCK_KEY, "op-new", ttl_seconds=10)


async def test_renewal_keeps_the_lock_and_only_for_its_holder(redis: Redis) -> None:
    locks = OperationLocks(redis)
    assert await locks.lock(LOCK_KEY, "op-1", ttl_seconds=0.3)
    for _ in range(4):
        await asyncio.sleep(0.15)
        assert await locks.renew_lock(LOCK_KEY, "op-1", ttl_seconds=0.3)
    assert await locks.holder(LOCK_KEY) == "op-1"
    assert not await locks.renew_lock(LOCK_KEY, "op-2", ttl_seconds=60)
    assert 0 < await redis.pttl(LOCK_KEY) <= 300
    await locks.release_lock(LOCK_KEY, "op-1")
    assert not await locks.renew_lock(LOCK_KEY, "op-1", ttl_seconds=60)  # renewing does not bring a lock back
    assert await locks.holder(LOCK_KEY) is None
