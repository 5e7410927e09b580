"""The operation records, lease locks and deadlines on a real Redis (`backend/streams/operations.py`)."""

from __future__ import annotations

import asyncio
import time
import uuid

from redis.asyncio import Redis

from backend import keys
from backend.streams.operations import Operation, OperationStore, lock_key_for

SESSION = uuid.UUID("00000000-0000-0000-0000-0000000000aa")


def operation(operation_id: str = "op-1") -> Operation:
    lock_key = lock_key_for(SESSION, "slow", {"x": 1})
    return Operation(operation_id, SESSION, "alice", "call-1", "slow", f"task-{operation_id}", "pending", lock_key)


def test_lock_key_is_per_session_tool_and_arguments() -> None:
    key = lock_key_for(SESSION, "generate_report", {"topic": "cats", "sections": 3})
    assert key.startswith(f"copilot:{{{SESSION}}}:op-lock:generate_report:")
    assert key == lock_key_for(SESSION, "generate_report", {"sections": 3, "topic": "cats"})  # order is irrelevant
    assert key != lock_key_for(SESSION, "generate_report", {"topic": "dogs", "sections": 3})
    assert key != lock_key_for(SESSION, "other_tool", {"topic": "cats", "sections": 3})
    assert key != lock_key_for(uuid.uuid4(), "generate_report", {"topic": "cats", "sections": 3})


async def test_lock_is_exclusive_and_released_only_by_its_holder(redis: Redis) -> None:
    store = OperationStore(redis)
    key = operation().lock_key
    assert await store.lock(key, "op-1", ttl_seconds=10)
    assert not await store.lock(key, "op-2", ttl_seconds=10)
    assert await store.holder(key) == "op-1"
    await store.release_lock(key, "op-2")  # not the holder: nothing happens
    assert await store.holder(key) == "op-1"
    await store.release_lock(key, "op-1")
    assert await store.holder(key) is None
    assert await store.lock(key, "op-2", ttl_seconds=10)


async def test_lock_of_a_dead_holder_expires(redis: Redis) -> None:
    store = OperationStore(redis)
    key = operation().lock_key
    assert await store.lock(key, "op-dead", ttl_seconds=0.3)
    assert not await store.lock(key, "op-new", ttl_seconds=10)
    await asyncio.sleep(0.4)  # nobody renewed it
    assert await store.holder(key) is None
    assert await store.lock(key, "op-new", ttl_seconds=10)


async def test_renewal_keeps_the_lock_and_only_for_its_holder(redis: Redis) -> None:
    store = OperationStore(redis)
    key = operation().lock_key
    assert await store.lock(key, "op-1", ttl_seconds=0.3)
    for _ in range(4):
        await asyncio.sleep(0.15)
        assert await store.renew_lock(key, "op-1", ttl_seconds=0.3)
    assert await store.holder(key) == "op-1"
    assert not await store.renew_lock(key, "op-2", ttl_seconds=60)
    assert 0 < await redis.pttl(key) <= 300
    await store.release_lock(key, "op-1")
    assert not await store.renew_lock(key, "op-1", ttl_seconds=60)  # renewing does not bring a lock back
    assert await store.holder(key) is None


async def test_record_round_trip_and_deadline(redis: Redis) -> None:
    store = OperationStore(redis)
    op = operation()
    assert await store.get(op.operation_id) is None
    await store.create(op, deadline=time.time() + 60)
    assert await store.get(op.operation_id) == op
    assert await redis.pttl(keys.operation(op.operation_id)) > 0
    assert await store.overdue() == []
    await store.postpone(op.operation_id, seconds=-1)
    assert await store.overdue() == [op.operation_id]


async def test_claim_is_exclusive_until_stale_then_settles_once(redis: Redis) -> None:
    store = OperationStore(redis)
    op = operation()
    await store.create(op, deadline=time.time() + 60)
    assert await store.claim(op.operation_id, stale_after_seconds=0.3) == "claimed"
    # A second claimer (a redelivered entry, a duplicate webhook) is told someone is on it...
    assert await store.claim(op.operation_id, stale_after_seconds=0.3) == "completing"
    assert (await store.get(op.operation_id)).status == "completing"  # type: ignore[union-attr]
    # ... until the claim is stale (its holder died): then it takes over.
    await asyncio.sleep(0.4)
    assert await store.claim(op.operation_id, stale_after_seconds=0.3) == "claimed"
    assert await store.settle(op.operation_id, "completed")
    assert not await store.settle(op.operation_id, "failed")  # settled once
    assert (await store.get(op.operation_id)).status == "completed"  # type: ignore[union-attr]
    assert await store.claim(op.operation_id, stale_after_seconds=0) == "completed"
    assert await redis.zscore(keys.OPERATION_DEADLINES, op.operation_id) is None


async def test_claim_of_an_unknown_or_failed_operation(redis: Redis) -> None:
    store = OperationStore(redis)
    assert await store.claim("nope", stale_after_seconds=1) == "missing"
    op = operation("op-2")
    await store.create(op, deadline=time.time() + 60)
    assert not await store.settle(op.operation_id, "failed")  # not claimed: cannot settle
    assert await store.claim(op.operation_id, stale_after_seconds=1) == "claimed"
    assert await store.settle(op.operation_id, "failed")
    assert await store.claim(op.operation_id, stale_after_seconds=0) == "failed"


async def test_postpone_does_not_bring_back_a_settled_operation(redis: Redis) -> None:
    store = OperationStore(redis)
    op = operation()
    await store.create(op, deadline=time.time() - 1)
    assert await store.overdue() == [op.operation_id]
    await store.claim(op.operation_id, stale_after_seconds=1)
    await store.settle(op.operation_id, "completed")
    await store.postpone(op.operation_id, seconds=-10)
    assert await store.overdue() == []
