"""Operation records, their lock, claims and deadlines in Postgres (`backend/store/operations.py`)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace

import asyncpg
import pytest

from backend.store.operations import Operation, OperationStore
from backend.store.postgres import ChatRepository


@pytest.fixture
def store(pool: asyncpg.Pool) -> OperationStore:
    return OperationStore(pool)


@pytest.fixture
async def session_id(pool: asyncpg.Pool) -> uuid.UUID:
    return (await ChatRepository(pool).create_session("alice")).id


def operation(session_id: uuid.UUID, operation_id: str = "op-1", digest: str = "d1") -> Operation:
    return Operation(operation_id, session_id, "alice", "call-1", "slow", digest, f"task-{operation_id}")


async def row(db: asyncpg.Connection, operation_id: str) -> asyncpg.Record:
    found = await db.fetchrow("SELECT * FROM chat_operations WHERE id = $1", operation_id)
    assert found is not None
    return found


async def test_record_round_trip_and_deadline(store: OperationStore, session_id: uuid.UUID) -> None:
    op = operation(session_id)
    assert await store.get(op.operation_id) is None
    assert await store.create(op, deadline_seconds=60, lock_seconds=60) is None
    assert await store.get(op.operation_id) == op
    assert await store.overdue() == []
    await store.postpone(op.operation_id, seconds=-1)
    assert await store.overdue() == [op.operation_id]


async def test_the_lock_admits_one_open_operation_per_session_tool_and_arguments(
    store: OperationStore, session_id: uuid.UUID, db: asyncpg.Connection
) -> None:
    first = operation(session_id, "op-1")
    racers = [operation(session_id, f"op-{i}") for i in range(2, 12)]
    results = await asyncio.gather(*(store.create(op, deadline_seconds=60, lock_seconds=60) for op in [first, *racers]))
    assert results.count(None) == 1  # one got the lock; every other one was told who holds it
    winner = next(op for op, result in zip([first, *racers], results, strict=True) if result is None)
    assert {r for r in results if r is not None} == {winner}
    assert await db.fetchval("SELECT count(*) FROM chat_operations") == 1
    # Other arguments, another tool or another session are other locks.
    assert await store.create(operation(session_id, "op-args", "d2"), deadline_seconds=60, lock_seconds=60) is None
    other_tool = replace(operation(session_id, "op-tool"), tool_name="other")
    assert await store.create(other_tool, deadline_seconds=60, lock_seconds=60) is None


async def test_a_settled_operation_frees_its_lock(store: OperationStore, session_id: uuid.UUID) -> None:
    op = operation(session_id)
    assert await store.create(op, deadline_seconds=60, lock_seconds=60) is None
    assert await store.claim(op.operation_id, stale_after_seconds=60) == "claimed"
    assert await store.create(operation(session_id, "op-2"), deadline_seconds=60, lock_seconds=60) == replace(
        op, status="completing"
    )
    assert await store.settle(op.operation_id, "completed")
    assert await store.create(operation(session_id, "op-2"), deadline_seconds=60, lock_seconds=60) is None


async def test_a_lapsed_lock_is_taken_over_and_its_operation_still_fails_at_its_deadline(
    store: OperationStore, session_id: uuid.UUID, db: asyncpg.Connection
) -> None:
    dead = operation(session_id, "op-dead")
    assert await store.create(dead, deadline_seconds=0.5, lock_seconds=0.2) is None
    assert await store.create(operation(session_id, "op-new"), deadline_seconds=60, lock_seconds=60) == dead
    await asyncio.sleep(0.3)  # nobody renewed it
    assert await store.create(operation(session_id, "op-new"), deadline_seconds=60, lock_seconds=60) is None
    assert (await row(db, "op-dead"))["lock_until"] is None
    assert (await store.get("op-dead")) == dead  # still open ...
    await asyncio.sleep(0.3)
    assert await store.overdue() == ["op-dead"]  # ... until its deadline fails it


async def test_renewal_keeps_the_lock_and_never_brings_it_back(store: OperationStore, session_id: uuid.UUID) -> None:
    op = operation(session_id)
    assert await store.create(op, deadline_seconds=60, lock_seconds=0.3) is None
    for _ in range(4):
        await asyncio.sleep(0.15)
        assert await store.renew_lock(op.operation_id, seconds=0.3)
    assert await store.create(operation(session_id, "op-2"), deadline_seconds=60, lock_seconds=60) == op
    await store.claim(op.operation_id, stale_after_seconds=60)
    await store.settle(op.operation_id, "failed")
    assert not await store.renew_lock(op.operation_id, seconds=60)
    assert not await store.delegate(op.operation_id, seconds=60)
    assert await store.create(operation(session_id, "op-2"), deadline_seconds=60, lock_seconds=60) is None


async def test_delegation_moves_deadline_and_lock_of_an_open_operation(
    store: OperationStore, session_id: uuid.UUID, db: asyncpg.Connection
) -> None:
    op = operation(session_id)
    assert await store.create(op, deadline_seconds=1, lock_seconds=1) is None
    assert await store.delegate(op.operation_id, seconds=3600)
    stored = await row(db, op.operation_id)
    assert (stored["deadline"] - stored["created_at"]).total_seconds() > 3000
    assert (stored["lock_until"] - stored["created_at"]).total_seconds() > 3000


async def test_claim_is_exclusive_until_stale_then_settles_once(store: OperationStore, session_id: uuid.UUID) -> None:
    op = operation(session_id)
    assert await store.create(op, deadline_seconds=60, lock_seconds=60) is None
    assert await store.claim(op.operation_id, stale_after_seconds=0.3) == "claimed"
    # A second claimer (a redelivered entry, a duplicate webhook) is told someone is on it...
    assert await store.claim(op.operation_id, stale_after_seconds=0.3) == "completing"
    assert (await store.get(op.operation_id)) == replace(op, status="completing")
    # ... until the claim is stale (its holder died): then it takes over.
    await asyncio.sleep(0.4)
    assert await store.claim(op.operation_id, stale_after_seconds=0.3) == "claimed"
    assert await store.settle(op.operation_id, "completed")
    assert not await store.settle(op.operation_id, "failed")  # settled once
    assert (await store.get(op.operation_id)) == replace(op, status="completed")
    assert await store.claim(op.operation_id, stale_after_seconds=0) == "completed"
    assert await store.overdue() == []


async def test_concurrent_claims_let_one_through(store: OperationStore, session_id: uuid.UUID) -> None:
    op = operation(session_id)
    assert await store.create(op, deadline_seconds=60, lock_seconds=60) is None
    results = await asyncio.gather(*(store.claim(op.operation_id, stale_after_seconds=60) for _ in range(10)))
    assert sorted(results) == ["claimed"] + ["completing"] * 9


async def test_claim_of_an_unknown_or_failed_operation(store: OperationStore, session_id: uuid.UUID) -> None:
    assert await store.claim("nope", stale_after_seconds=1) == "missing"
    op = operation(session_id, "op-2")
    assert await store.create(op, deadline_seconds=60, lock_seconds=60) is None
    assert not await store.settle(op.operation_id, "failed")  # not claimed: cannot settle
    assert await store.claim(op.operation_id, stale_after_seconds=1) == "claimed"
    assert await store.settle(op.operation_id, "failed")
    assert await store.claim(op.operation_id, stale_after_seconds=0) == "failed"


async def test_postpone_does_not_bring_back_a_settled_operation(store: OperationStore, session_id: uuid.UUID) -> None:
    op = operation(session_id)
    assert await store.create(op, deadline_seconds=-1, lock_seconds=60) is None
    assert await store.overdue() == [op.operation_id]
    await store.claim(op.operation_id, stale_after_seconds=1)
    await store.settle(op.operation_id, "completed")
    await store.postpone(op.operation_id, seconds=-10)
    assert await store.overdue() == []


async def test_operations_go_with_their_session(
    store: OperationStore, session_id: uuid.UUID, pool: asyncpg.Pool
) -> None:
    op = operation(session_id)
    assert await store.create(op, deadline_seconds=-1, lock_seconds=60) is None
    assert await ChatRepository(pool).delete_session(session_id, "alice")
    assert await store.get(op.operation_id) is None
    assert await store.overdue() == []
