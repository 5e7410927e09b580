"""The completions consumer group on a real Redis (`backend/streams/completions.py`): acknowledged after the handler,
reclaimed from a dead consumer, capped into the dead-letter stream, and alive after a Redis flush.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from backend import keys
from backend.chat.operation_runner import OperationRunner
from backend.chat.tokens import TokenCounter
from backend.config import Settings
from backend.embedded import embedded_services
from backend.store.cache import SessionCache
from backend.store.models import NewMessage
from backend.store.operations import Operation, OperationStore
from backend.store.postgres import ChatRepository
from backend.store.sessions import SessionStore
from backend.streams.completions import (
    Completion,
    CompletionConsumer,
    PoisonEntry,
    parse,
    publish,
    publish_delivery,
)
from backend.streams.limits import StreamLimits
from backend.streams.operation_locks import OperationLocks, arguments_digest, lock_key_for
from backend.streams.turns import TurnRegistry
from tests.helpers import wait_for
from tests.redis_server import private_redis_server, system_redis_server

RECLAIM_IDLE = 0.2
MAX_DELIVERIES = 3
MAX_LEN = 10_000
DEAD_MAX_LEN = 1_000

Background = Callable[[Awaitable[None]], "asyncio.Task[None]"]


def make_consumer(
    redis: Redis,
    name: str,
    *,
    reclaim_idle: float = RECLAIM_IDLE,
    block: float = 0.05,
    dead_max_len: int = DEAD_MAX_LEN,
) -> CompletionConsumer:
    return CompletionConsumer(
        redis,
        consumer=name,
        reclaim_idle_seconds=reclaim_idle,
        max_deliveries=MAX_DELIVERIES,
        dead_letter_max_len=dead_max_len,
        block_seconds=block,
    )


@pytest.fixture
async def background() -> AsyncIterator[Background]:
    """Starts tasks (consumers) that are cancelled when the test ends."""
    tasks: list[asyncio.Task[None]] = []

    def start(work: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        tasks.append(task)
        return task

    yield start
    for task in tasks:
        task.cancel()
    async with asyncio.timeout(5):  # a consumer that ignores its cancellation would hang a pod's shutdown
        await asyncio.gather(*tasks, return_exceptions=True)


async def pending_count(redis: Redis) -> int:
    summary: Any = await redis.xpending(keys.COMPLETIONS, keys.COMPLETIONS_GROUP)
    return int(summary["pending"])


async def entries(redis: Redis, stream: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    found: Any = await redis.xrange(stream)
    return list(found)


async def dead_letters(redis: Redis) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await entries(redis, keys.COMPLETIONS_DEAD)]


class Recorder:
    """A handler that records each completion; it can be told to fail the first `failures` calls."""

    def __init__(self, failures: int = 0) -> None:
        self.calls: list[Completion] = []
        self.failures = failures

    async def __call__(self, completion: Completion) -> None:
        self.calls.append(completion)
        if len(self.calls) <= self.failures:
            raise RuntimeError("handler failed")

    async def called(self, times: int) -> bool:
        return len(self.calls) >= times


# --- the entry format ---------------------------------------------------------------------------------------


async def test_publish_then_parse_round_trip(redis: Redis) -> None:
    entry_id = await publish(redis, Completion("op-1", False, None, "boom"), max_len=MAX_LEN)
    [(read_id, fields)] = await entries(redis, keys.COMPLETIONS)
    assert read_id.decode() == entry_id
    assert parse(fields) == Completion("op-1", False, None, "boom")
    await publish(redis, Completion("op-2", True, {"nested": [1, "two"]}), max_len=MAX_LEN)
    assert parse((await entries(redis, keys.COMPLETIONS))[1][1]) == Completion("op-2", True, {"nested": [1, "two"]})


@pytest.mark.parametrize(
    "fields",
    [
        {b"completion": b"not json"},
        {b"completion": b'{"success": true}'},  # no operation id
        {b"completion": b'{"operation_id": "op-1"}'},  # no success flag
        {b"completion": b"[1, 2]"},
        {b"something": b"else"},
    ],
)
def test_parse_refuses_what_is_not_a_completion(fields: dict[bytes, bytes]) -> None:
    with pytest.raises(PoisonEntry):
        parse(fields)


# --- bounded streams and delivery ids -----------------------------------------------------------------------


async def node_size(redis: Redis) -> int:
    """`stream-node-max-entries`: approximate trimming drops whole nodes, so a stream exceeds its bound by less."""
    config: Any = await redis.config_get("stream-node-max-entries")
    return int(config["stream-node-max-entries"])


def test_stream_limit_defaults_are_the_settings_defaults() -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert StreamLimits() == StreamLimits(
        completions=defaults.completion_stream_max_len,
        dead_letters=defaults.completion_dead_letter_max_len,
        jobs=defaults.job_stream_max_len,
    )


async def test_publish_keeps_the_completions_stream_within_its_bound(redis: Redis) -> None:
    for i in range(1_000):
        await publish(redis, Completion(f"op-{i}", True, i), max_len=100)
    assert 100 <= await redis.xlen(keys.COMPLETIONS) <= 100 + await node_size(redis)
    newest = await entries(redis, keys.COMPLETIONS)
    assert parse(newest[-1][1]).operation_id == "op-999"  # the oldest go, the newest stay


async def test_a_delivery_is_enqueued_once_and_remembered_for_a_while(redis: Redis) -> None:
    completion = Completion("op-1", True, {"v": 1})
    first = await publish_delivery(redis, completion, delivery_id="d-1", remember_seconds=600, max_len=MAX_LEN)
    assert first is not None
    again = await publish_delivery(redis, completion, delivery_id="d-1", remember_seconds=600, max_len=MAX_LEN)
    assert again is None
    other = await publish_delivery(redis, completion, delivery_id="d-2", remember_seconds=600, max_len=MAX_LEN)
    assert other is not None and other != first
    assert [entry_id.decode() for entry_id, _ in await entries(redis, keys.COMPLETIONS)] == [first, other]
    assert 599_000 < await redis.pttl(keys.webhook_delivery("d-1")) <= 600_000


async def test_deliveries_keep_the_completions_stream_within_its_bound(redis: Redis) -> None:
    for i in range(300):
        await publish_delivery(redis, Completion("op", True, i), delivery_id=f"d-{i}", remember_seconds=60, max_len=100)
    assert 100 <= await redis.xlen(keys.COMPLETIONS) <= 100 + await node_size(redis)


async def test_a_delivery_whose_append_failed_is_not_remembered(redis: Redis) -> None:
    """Otherwise the sender's retry would be answered `duplicate` and the completion lost."""
    await redis.set(keys.COMPLETIONS, "not a stream")  # every XADD to it fails
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await publish_delivery(redis, Completion("op", True, 1), delivery_id="d-1", remember_seconds=60, max_len=100)
    assert not await redis.exists(keys.webhook_delivery("d-1"))
    await redis.delete(keys.COMPLETIONS)
    assert await publish_delivery(redis, Completion("op", True, 1), delivery_id="d-1", remember_seconds=60, max_len=100)


async def test_dead_letters_stay_within_their_bound(redis: Redis, background: Background) -> None:
    background(make_consumer(redis, "a", dead_max_len=10).consume(Recorder()))
    for i in range(300):
        await redis.xadd(keys.COMPLETIONS, {"poison": str(i)})
    await wait_for(lambda: _no_pending(redis))
    await wait_for(lambda: _last_dead_is(redis, b"299"))
    assert 10 <= await redis.xlen(keys.COMPLETIONS_DEAD) <= 10 + await node_size(redis)


async def _last_dead_is(redis: Redis, poison: bytes) -> bool:
    last: Any = await redis.xrevrange(keys.COMPLETIONS_DEAD, count=1)
    return bool(last) and last[0][1].get(b"poison") == poison


async def test_a_completion_trimmed_before_it_was_handled_leaves_the_group_and_is_logged(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """What happens past the bound: the completion is gone (its operation fails at its deadline), the consumer
    drops it from the group with a warning, and nothing is retried or dead-lettered."""
    consumer = make_consumer(redis, "a", reclaim_idle=0.1)
    await consumer.ensure_group()
    lost = await publish(redis, Completion("op-lost", True, None), max_len=100)
    await consumer.step(Recorder(failures=1))  # read, failed: pending
    assert await pending_count(redis) == 1
    for i in range(500):
        await redis.xadd(keys.COMPLETIONS, {"poison": str(i)}, maxlen=100, approximate=True)
    assert (await redis.xrange(keys.COMPLETIONS, min=lost, max=lost)) == []  # trimmed away
    await asyncio.sleep(0.2)
    with caplog.at_level("WARNING", logger="copilot.completions"):
        while await consumer.step(Recorder()):
            pass
    assert any(lost in r.getMessage() and "trimmed" in r.getMessage() for r in caplog.records)
    summary: Any = await redis.xpending_range(keys.COMPLETIONS, keys.COMPLETIONS_GROUP, min=lost, max=lost, count=1)
    assert summary == []
    assert all(d.get(b"entry", b"").decode() != lost for d in await dead_letters(redis))


# --- handling and acknowledging -----------------------------------------------------------------------------


async def test_a_completion_is_handled_once_and_acknowledged(redis: Redis) -> None:
    consumer = make_consumer(redis, "a")
    await consumer.ensure_group()
    await consumer.ensure_group()  # idempotent (BUSYGROUP is not an error)
    handler = Recorder()
    await publish(redis, Completion("op-1", True, {"answer": 42}), max_len=MAX_LEN)
    assert await consumer.step(handler) == 1
    assert handler.calls == [Completion("op-1", True, {"answer": 42})]
    assert await pending_count(redis) == 0
    assert await consumer.step(handler) == 0  # nothing handed out twice
    assert len(handler.calls) == 1


async def test_two_consumers_share_the_work_without_duplicates(redis: Redis, background: Background) -> None:
    handler = Recorder()
    for name in ("a", "b"):
        await make_consumer(redis, name).ensure_group()
        background(make_consumer(redis, name).consume(handler))
    for i in range(20):
        await publish(redis, Completion(f"op-{i}", True, i), max_len=MAX_LEN)
    await wait_for(lambda: handler.called(20))
    await asyncio.sleep(RECLAIM_IDLE * 2)  # a reclaim round would show a duplicate
    assert sorted(c.result for c in handler.calls) == list(range(20))
    assert await pending_count(redis) == 0


async def test_a_failed_handler_is_retried_by_reclaiming(redis: Redis, background: Background) -> None:
    handler = Recorder(failures=1)
    background(make_consumer(redis, "a").consume(handler))
    await publish(redis, Completion("op-1", True, "ok"), max_len=MAX_LEN)
    await wait_for(lambda: handler.called(2))
    await wait_for(lambda: _no_pending(redis))
    assert [c.operation_id for c in handler.calls] == ["op-1", "op-1"]
    assert await dead_letters(redis) == []


async def _no_pending(redis: Redis) -> bool:
    return await pending_count(redis) == 0


async def test_a_completion_that_always_fails_goes_to_the_dead_letter_stream(
    redis: Redis, background: Background
) -> None:
    handler = Recorder(failures=1_000)
    background(make_consumer(redis, "a").consume(handler))
    entry_id = await publish(redis, Completion("op-poisoned", True, "x"), max_len=MAX_LEN)
    await wait_for(lambda: _dead_count(redis, 1))
    await asyncio.sleep(RECLAIM_IDLE * 3)
    assert len(handler.calls) == MAX_DELIVERIES  # then no more tries
    [dead] = await dead_letters(redis)
    assert dead[b"entry"].decode() == entry_id
    assert dead[b"reason"] == f"failed {MAX_DELIVERIES} times".encode()
    assert parse(dead) == Completion("op-poisoned", True, "x")  # kept whole for inspection
    assert await pending_count(redis) == 0


async def _dead_count(redis: Redis, n: int) -> bool:
    return int(await redis.xlen(keys.COMPLETIONS_DEAD)) >= n


async def test_poison_entries_are_dead_lettered_at_once(redis: Redis, background: Background) -> None:
    handler = Recorder()
    background(make_consumer(redis, "a").consume(handler))
    poison: list[dict[Any, Any]] = [
        {"completion": b"not json"},
        {"completion": orjson.dumps({"success": True})},
        {"unrelated": b"field"},
    ]
    for fields in poison:
        await redis.xadd(keys.COMPLETIONS, fields)
    await publish(redis, Completion("op-fine", True, None), max_len=MAX_LEN)
    await wait_for(lambda: handler.called(1))
    await wait_for(lambda: _dead_count(redis, 3))
    assert [c.operation_id for c in handler.calls] == ["op-fine"]  # poison never reaches the handler
    dead = await dead_letters(redis)
    assert all(d[b"reason"].startswith(b"not a completion") for d in dead)
    assert [d.get(b"completion", d.get(b"unrelated")) for d in dead] == [b"not json", b'{"success":true}', b"field"]
    assert await pending_count(redis) == 0


async def test_a_cancellation_lost_inside_a_redis_call_still_stops_the_consumer(redis: Redis) -> None:
    """Python 3.11's `asyncio.wait_for`, which redis-py sends every command through, returns the result and drops
    a cancellation that lands as the command completes. The handler below loses one the same way."""
    handled = asyncio.Event()

    async def loses_its_cancellation(completion: Completion) -> None:
        asyncio.current_task().cancel()  # type: ignore[union-attr]
        with contextlib.suppress(asyncio.CancelledError):  # what wait_for does when its inner future is done
            await asyncio.sleep(0)
        handled.set()

    consumer = asyncio.ensure_future(make_consumer(redis, "a").consume(loses_its_cancellation))
    try:
        await publish(redis, Completion("op-1", True, None), max_len=MAX_LEN)
        async with asyncio.timeout(5):
            await handled.wait()
            await asyncio.gather(consumer, return_exceptions=True)
        assert consumer.cancelled()
        assert await pending_count(redis) == 0  # the completion it was handling was finished and acknowledged
    finally:
        consumer.cancel()


# --- a consumer killed mid-processing -----------------------------------------------------------------------


@pytest.fixture
async def sessions(pool: asyncpg.Pool, redis: Redis) -> AsyncIterator[SessionStore]:
    store = SessionStore(ChatRepository(pool), SessionCache(redis, ttl_seconds=60))
    yield store
    await store.close()


@pytest.fixture
def ops(pool: asyncpg.Pool) -> OperationStore:
    return OperationStore(pool)


class Continuations:
    """The runner's continuation, recorded. The first one hangs (its consumer is killed in the middle of it)."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.finished: list[str] = []
        self.first_started = asyncio.Event()

    async def __call__(self, op: Operation) -> None:
        self.started.append(op.operation_id)
        if len(self.started) == 1:
            self.first_started.set()
            await asyncio.Event().wait()  # until cancelled
        self.finished.append(op.operation_id)


async def pending_operation(redis: Redis, sessions: SessionStore, ops: OperationStore) -> Operation:
    """A session whose last step called a long-running tool, its pending tool message, and the operation."""
    session = await sessions.create("alice", title="t")
    call = {"id": "call-1", "type": "function", "function": {"name": "slow", "arguments": "{}"}}
    await sessions.append(
        session.id,
        [
            NewMessage("user", "go"),
            NewMessage("assistant", None, tool_calls=[call]),
            NewMessage("tool", '{"type": "operation_pending"}', tool_call_id="call-1"),
        ],
    )
    op_id = str(uuid.uuid4())
    op = Operation(op_id, session.id, "alice", "call-1", "slow", arguments_digest({}), str(uuid.uuid4()))
    assert await OperationLocks(redis).lock(lock_key_for(session.id, "slow", {}), op_id, ttl_seconds=60)
    assert await ops.create(op, deadline_seconds=60, lock_seconds=60) is None
    return op


def make_runner(redis: Redis, sessions: SessionStore, ops: OperationStore, *, stale_claim: float) -> OperationRunner:
    return OperationRunner(
        redis=redis,
        operations=ops,
        locks=OperationLocks(redis),
        registry=TurnRegistry(redis, ttl_seconds=600, lease_seconds=5),
        store=sessions,
        counter=TokenCounter("mock-model"),
        lock_seconds=60,
        delegated_timeout_seconds=600,
        stale_claim_seconds=stale_claim,
    )


async def tool_content(sessions: SessionStore, op: Operation) -> str | None:
    messages = await sessions.messages(op.session_id)
    return next(m.content for m in messages if m.tool_call_id == op.tool_call_id)


async def test_a_consumer_killed_mid_processing_is_taken_over_and_the_result_lands_once(
    redis: Redis, sessions: SessionStore, ops: OperationStore, background: Background
) -> None:
    op = await pending_operation(redis, sessions, ops)
    runner = make_runner(redis, sessions, ops, stale_claim=RECLAIM_IDLE)
    continuations = Continuations()
    runner.set_continuation(continuations)

    a = background(make_consumer(redis, "pod-a").consume(runner.complete))
    await publish(redis, Completion(op.operation_id, True, {"report": "done"}), max_len=MAX_LEN)
    async with asyncio.timeout(10):
        await continuations.first_started.wait()
    assert (await ops.get(op.operation_id)).status == "completing"  # type: ignore[union-attr]
    a.cancel()  # pod A dies in the middle of the handler: no ack, no settle, the lock is still held
    await asyncio.gather(a, return_exceptions=True)
    assert await pending_count(redis) == 1

    background(make_consumer(redis, "pod-b").consume(runner.complete))
    await wait_for(lambda: _no_pending(redis))
    assert continuations.finished == [op.operation_id]  # B finished it, once
    assert (await ops.get(op.operation_id)).status == "completed"  # type: ignore[union-attr]
    assert await OperationLocks(redis).holder(lock_key_for(op.session_id, "slow", {})) is None  # released
    assert await ops.overdue() == []  # settled: no deadline any more
    assert orjson.loads(await tool_content(sessions, op) or "") == {"report": "done"}
    assert await dead_letters(redis) == []

    # A duplicate (a retried webhook) afterwards changes nothing.
    await publish(redis, Completion(op.operation_id, False, None, "late failure"), max_len=MAX_LEN)
    await wait_for(lambda: _no_pending(redis))
    await asyncio.sleep(RECLAIM_IDLE)
    assert continuations.started == [op.operation_id, op.operation_id]
    assert continuations.finished == [op.operation_id]
    assert orjson.loads(await tool_content(sessions, op) or "") == {"report": "done"}


async def test_a_live_claim_keeps_a_second_consumer_off_until_it_is_stale(
    redis: Redis, sessions: SessionStore, ops: OperationStore
) -> None:
    op = await pending_operation(redis, sessions, ops)
    runner = make_runner(redis, sessions, ops, stale_claim=0.5)
    continuations = Continuations()
    continuations.started.append("warm-up")  # no hanging: every continuation finishes
    runner.set_continuation(continuations)
    assert await ops.claim(op.operation_id, stale_after_seconds=0.5) == "claimed"  # someone else is on it

    consumer = make_consumer(redis, "b", reclaim_idle=0.1)
    await consumer.ensure_group()
    await publish(redis, Completion(op.operation_id, True, "r"), max_len=MAX_LEN)
    await consumer.step(runner.complete)  # InProgress: not acknowledged, not lost
    assert continuations.finished == []
    assert await pending_count(redis) == 1
    assert await tool_content(sessions, op) == '{"type": "operation_pending"}'

    await asyncio.sleep(0.6)  # the other claimer never finished: its claim is stale now
    await consumer.step(runner.complete)
    assert continuations.finished == [op.operation_id]
    assert await pending_count(redis) == 0
    assert await tool_content(sessions, op) == "r"  # a text result is stored as it is


async def test_a_result_whose_message_is_missing_is_retried_not_lost(
    redis: Redis, sessions: SessionStore, ops: OperationStore
) -> None:
    op = await pending_operation(redis, sessions, ops)
    orphan = replace(op, operation_id="op-orphan", tool_call_id="call-unknown", arguments_digest="other")
    assert await ops.create(orphan, deadline_seconds=60, lock_seconds=60) is None
    runner = make_runner(redis, sessions, ops, stale_claim=0.1)
    consumer = make_consumer(redis, "a", reclaim_idle=0.1)
    await consumer.ensure_group()
    await publish(redis, Completion("op-orphan", True, "r"), max_len=MAX_LEN)
    await consumer.step(runner.complete)  # LookupError: left pending
    assert await pending_count(redis) == 1
    await publish(
        redis, Completion("op-unknown", True, "r"), max_len=MAX_LEN
    )  # an operation nobody knows: dropped, acknowledged
    await consumer.step(runner.complete)
    assert await pending_count(redis) == 1


# --- Redis flushed under the consumer ----------------------------------------------------------------------


@pytest.fixture(params=["embedded", "system"])
async def private_redis(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Redis]:
    """A Redis of this test alone (FLUSHALL wipes every database of the server it hits): the embedded one (6.2),
    and the machine's redis-server (7 here), which answers a read blocked on a deleted stream differently."""
    if request.param == "embedded":
        async with embedded_services(tmp_path, postgres=False, redis=True) as urls:
            assert urls.redis_url is not None
            client = Redis.from_url(urls.redis_url)
            yield client
            await client.aclose()
        return
    executable = system_redis_server()
    if executable is None:
        pytest.skip("no redis-server on this machine")
    async with private_redis_server(executable) as (_, client):
        yield client


@pytest.mark.parametrize("block", [0.05, 2.0], ids=["polling", "blocked-in-xreadgroup"])
async def test_the_group_is_created_again_after_flushall(
    private_redis: Redis, background: Background, block: float
) -> None:
    handler = Recorder()
    background(make_consumer(private_redis, "a", block=block).consume(handler))
    await publish(private_redis, Completion("before", True, None), max_len=MAX_LEN)
    await wait_for(lambda: handler.called(1))

    await private_redis.flushall()
    await asyncio.sleep(0.1)  # the consumer is now reading a stream and a group that no longer exist
    await publish(private_redis, Completion("after", True, None), max_len=MAX_LEN)
    await wait_for(lambda: handler.called(2), within=block + 5)
    assert [c.operation_id for c in handler.calls] == ["before", "after"]
    groups: Any = await private_redis.xinfo_groups(keys.COMPLETIONS)
    assert [g["name"] for g in groups] == [keys.COMPLETIONS_GROUP.encode()]
    assert await pending_count(private_redis) == 0
