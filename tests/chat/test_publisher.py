"""The coalescing turn publisher against a real Redis."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Sequence

import orjson
import pytest
from redis.asyncio import Redis

from backend import keys
from backend.chat import protocol as p
from backend.chat.chunk_writer import ChunkWriter
from backend.chat.publisher import TurnPublisher
from backend.streams.turns import ChunkWrite, Published, TurnRegistry, entry_id


async def entries(redis: Redis, turn_id: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(keys.turn_events(turn_id))]


async def test_close_while_the_flusher_waits_out_its_window(redis: Redis) -> None:
    """Regression: `close` during the flusher's wait for its window hung forever (the flusher cleared the wake-up
    that `close` had set, then waited for another), so the turn never wrote its end and its stream never ended."""
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-pub", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=1.0), "t-pub")
    publisher.emit(p.TextStart(id="text-0"))  # written at once: the first chunk after a quiet period
    await asyncio.sleep(0.05)
    publisher.emit(p.TextDelta(id="text-0", delta="hi"))  # the flusher now waits for its window to pass
    await asyncio.sleep(0.05)
    publisher.emit(p.TextEnd(id="text-0"))

    async with asyncio.timeout(5):
        assert await publisher.close("completed")

    written = await entries(redis, "t-pub")
    assert [orjson.loads(e[b"c"])["type"] for e in written if b"c" in e] == ["text-start", "text-delta", "text-end"]
    assert b"end" in written[-1]


async def test_close_does_not_wait_out_the_window(redis: Redis) -> None:
    """The end is written the moment the turn ends: a client waited in `streaming` for the rest of the publish
    window (~250 ms by default) after every reply's `finish` chunk. A window of a minute makes the wait a hang."""
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-now", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=60.0), "t-now")
    publisher.emit(p.TextStart(id="text-0"))  # written at once
    await asyncio.sleep(0.05)
    publisher.emit(p.TextDelta(id="text-0", delta="hi"))  # the flusher now waits for its window to pass
    await asyncio.sleep(0.05)

    async with asyncio.timeout(5):
        assert await publisher.close("completed")

    written = await entries(redis, "t-now")
    assert [orjson.loads(e[b"c"])["type"] for e in written if b"c" in e] == ["text-start", "text-delta"]
    assert b"end" in written[-1]


async def test_a_turns_first_token_reaches_redis_at_once_not_a_window_after_its_start(redis: Redis) -> None:
    """A quiet pod writes at once, then once per window. The markers a turn begins with (`start`, `start-step`)
    took that first write, so the first token, a model's first-token time later, waited a whole window (250 ms by
    default) before a follower on another pod could see it; they now go with it."""
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-first", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=10.0), "t-first")
    publisher.emit(p.Start(message_id="m"))
    publisher.emit(p.StartStep())
    await asyncio.sleep(0.05)  # the model's time to its first token
    assert await entries(redis, "t-first") == []  # nothing to show yet: nothing written
    publisher.emit(p.TextStart(id="text-0"))
    publisher.emit(delta("hi"))

    for _ in range(200):  # 2 s at most, well before the window
        if len(written := await entries(redis, "t-first")) == 4:
            break
        await asyncio.sleep(0.01)
    assert [orjson.loads(e[b"c"])["type"] for e in written] == ["start", "start-step", "text-start", "text-delta"]
    assert await publisher.close("completed")


async def test_coalesces_deltas_and_writes_the_rest_with_the_end(redis: Redis) -> None:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-co", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=10.0), "t-co")
    publisher.emit(p.TextStart(id="text-0"))
    await asyncio.sleep(0.05)
    for word in ("a ", "b ", "c"):
        publisher.emit(p.TextDelta(id="text-0", delta=word))
    publisher.emit(p.TextEnd(id="text-0"))
    async with asyncio.timeout(5):
        assert await publisher.close("completed")
    written = [orjson.loads(e[b"c"]) for e in await entries(redis, "t-co") if b"c" in e]
    assert written == [
        {"type": "text-start", "id": "text-0"},
        {"type": "text-delta", "id": "text-0", "delta": "a b c"},
        {"type": "text-end", "id": "text-0"},
    ]


# --- followers on the owner's pod, explicit entry ids -------------------------------------------------------


def delta(text: str) -> p.TextDelta:
    return p.TextDelta(id="text-0", delta=text)


async def test_a_follower_on_the_owners_pod_gets_chunks_before_redis_does(redis: Redis) -> None:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-local", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=10.0), "t-local")
    follower = publisher.follow(after="0", heartbeat_seconds=5)
    publisher.emit(p.TextStart(id="text-0"))
    await asyncio.sleep(0.05)  # the first chunk is written at once; the next ones wait for the window
    publisher.emit(delta("hi"))
    async with asyncio.timeout(1):
        assert await anext(follower) == (entry_id("t-local", 1), p.to_json(p.TextStart(id="text-0")))
        assert await anext(follower) == (entry_id("t-local", 2), p.to_json(delta("hi")))
    assert len(await entries(redis, "t-local")) == 1  # "hi" is not in Redis yet: the follower did not wait for it
    assert await publisher.close("completed")
    assert [entry async for entry in follower] == []  # the end stops the follower
    written = await redis.xrange(keys.turn_events("t-local"))
    # The ids followers saw are Redis' own.
    assert [raw_id.decode() for raw_id, _ in written[:2]] == [entry_id("t-local", 1), entry_id("t-local", 2)]


async def test_a_cursor_from_the_owners_pod_resumes_on_any_pod(redis: Redis) -> None:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-cursor", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=0.0), "t-cursor")
    local = publisher.follow(after="0", heartbeat_seconds=5)
    for word in ("a", "b", "c", "d"):
        publisher.emit(delta(word))
        await anext(local)  # taken one by one: none is merged
    assert await publisher.close("completed")
    replayed = [entry async for entry in registry.follow("t-cursor", after=entry_id("t-cursor", 2))]
    assert replayed == [
        (entry_id("t-cursor", 3), p.to_json(delta("c"))),
        (entry_id("t-cursor", 4), p.to_json(delta("d"))),
    ]
    assert [entry async for entry in publisher.follow(after=entry_id("t-cursor", 2), heartbeat_seconds=5)] == replayed


async def test_deltas_nobody_has_taken_are_merged_and_taken_ones_are_not(redis: Redis) -> None:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-merge", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=10.0), "t-merge")
    follower = publisher.follow(after="0", heartbeat_seconds=5)
    publisher.emit(p.TextStart(id="text-0"))
    publisher.emit(delta("a "))
    publisher.emit(delta("b "))
    assert [await anext(follower), await anext(follower)] == [
        (entry_id("t-merge", 1), p.to_json(p.TextStart(id="text-0"))),
        (entry_id("t-merge", 2), p.to_json(delta("a b "))),
    ]
    publisher.emit(delta("c"))  # "a b " was taken: this one is an entry of its own
    assert await anext(follower) == (entry_id("t-merge", 3), p.to_json(delta("c")))
    assert await publisher.close("completed")
    written = [orjson.loads(e[b"c"]) for e in await entries(redis, "t-merge") if b"c" in e]
    assert [c.get("delta") for c in written] == [None, "a b ", "c"]


async def test_writes_to_redis_happen_once_per_window_whatever_the_pace(redis: Redis) -> None:
    class CountingRegistry(TurnRegistry):
        writes = 0

        async def publish_many(self, writes: Sequence[ChunkWrite]) -> list[Published | Exception]:
            CountingRegistry.writes += 1
            return await super().publish_many(writes)

    registry = CountingRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-pace", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=0.2), "t-pace")
    follower = publisher.follow(after="0", heartbeat_seconds=5)
    for i in range(50):  # a token every 10 ms for half a second, each taken by the follower at once
        publisher.emit(delta(f"{i} "))
        assert (await anext(follower))[0] == entry_id("t-pace", i + 1)
        await asyncio.sleep(0.01)
    assert await publisher.close("completed")
    assert CountingRegistry.writes <= 5  # one at once, then one per 0.2 s window (~3 in 0.5 s), not 50
    assert len([e for e in await entries(redis, "t-pace") if b"c" in e]) == 50


async def test_a_retried_write_adds_nothing_twice(redis: Redis) -> None:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-retry", "s", "alice")
    chunks = [p.to_json(delta("a")), p.to_json(delta("b"))]
    assert await registry.publish("t-retry", chunks, ids=["0-1", "0-2"]) == "written"
    # The reply to the first write was lost; the publisher writes the same entries again, with one more.
    assert await registry.publish("t-retry", [*chunks, p.to_json(delta("c"))], ids=["0-1", "0-2", "0-3"]) == "written"
    assert [e[b"c"] for e in await entries(redis, "t-retry")] == [*chunks, p.to_json(delta("c"))]


async def test_a_turn_ended_elsewhere_takes_no_more_writes_and_its_followers_are_told(redis: Redis) -> None:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-taken", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=0.0), "t-taken")
    follower = publisher.follow(after="0", heartbeat_seconds=5)
    publisher.emit(delta("mine"))
    assert (await anext(follower))[0] == entry_id("t-taken", 1)
    await asyncio.sleep(0.05)
    # This pod's lease lapsed and another pod closed the turn.
    assert await registry.finish("t-taken", "interrupted", [p.to_json(p.Finish(finish_reason="error"))])
    assert await registry.publish("t-taken", [p.to_json(delta("late"))], ids=[entry_id("t-taken", 9)]) == "ended"
    publisher.emit(delta("late"))
    assert not await publisher.close("completed")
    assert publisher.taken_over
    assert [entry async for entry in follower] == [(entry_id("t-taken", 2), p.to_json(delta("late")))]
    written = [e.get(b"c") for e in await entries(redis, "t-taken")]
    assert written[0] == p.to_json(delta("mine")) and p.to_json(delta("late")) not in written


async def test_finish_reaches_followers_and_redis_only_with_the_end(redis: Redis) -> None:
    """The end's round trip carries the last step's cache update ahead of the end: a client that reads the session
    on `finish` must find its reply, so `finish` is shown to this pod's followers and written to Redis only with
    the end, never by a window's write before it."""
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-held", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=0.0), "t-held")
    follower = publisher.follow(after="0", heartbeat_seconds=5)
    publisher.emit(delta("reply"))
    publisher.emit(p.Finish(finish_reason="stop"))
    async with asyncio.timeout(1):
        assert (await anext(follower))[1] == p.to_json(delta("reply"))
    await asyncio.sleep(0.05)  # windows of 0 s: the writer had every chance to write
    assert [orjson.loads(e[b"c"])["type"] for e in await entries(redis, "t-held")] == ["text-delta"]
    taken = asyncio.ensure_future(anext(follower))
    await asyncio.sleep(0.05)
    assert not taken.done()  # nothing shown here either
    assert await publisher.close("completed")
    async with asyncio.timeout(1):
        assert await taken == (entry_id("t-held", 2), p.to_json(p.Finish(finish_reason="stop")))
        assert [entry async for entry in follower] == []
    written = await entries(redis, "t-held")
    assert [orjson.loads(e[b"c"])["type"] for e in written if b"c" in e] == ["text-delta", "finish"]
    assert b"end" in written[-1]


async def test_a_turn_whose_keys_vanished_ends_its_followers_from_memory(redis: Redis) -> None:
    """Regression: after a Redis restart without data mid-turn, `close` could not write the end (no status record)
    and sent this pod's followers to Redis for it, where nothing would ever come: they had the `finish` at once
    but the end of their stream only at the next heartbeat tick (15 s)."""
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-vanish", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=0.0), "t-vanish")
    follower = publisher.follow(after="0", heartbeat_seconds=5)
    publisher.emit(delta("before"))
    assert (await anext(follower))[1] == p.to_json(delta("before"))
    await redis.delete(keys.turn_meta("t-vanish"), keys.turn_events("t-vanish"))  # Redis restarted empty
    publisher.emit(p.Finish(finish_reason="stop"))
    assert not await publisher.close("completed")
    assert not publisher.taken_over  # nobody else ends this turn: the log here is the whole message
    async with asyncio.timeout(1):
        assert [entry async for entry in follower] == [
            (entry_id("t-vanish", 2), p.to_json(p.Finish(finish_reason="stop")))
        ]


async def test_an_abandoned_publisher_sends_its_followers_to_redis(redis: Redis) -> None:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-abandon", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=0.0), "t-abandon")
    follower = publisher.follow(after="0", heartbeat_seconds=5)
    publisher.abandon()
    async with asyncio.timeout(1):
        assert [entry async for entry in follower] == []
    assert publisher.taken_over


async def test_a_delta_emitted_while_its_predecessor_is_being_written_is_not_lost(redis: Redis) -> None:
    """Regression: a delta was merged into the entry a write had in flight; the write stored the entry without it
    and marked it written, so Redis (every other pod, every replay) missed that text."""
    in_flight = asyncio.Event()

    class SlowRegistry(TurnRegistry):
        async def publish_many(self, writes: Sequence[ChunkWrite]) -> list[Published | Exception]:
            in_flight.set()
            await asyncio.sleep(0.1)  # a slow round trip
            return await super().publish_many(writes)

    registry = SlowRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-flight", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=0.0), "t-flight")
    publisher.emit(delta("a "))
    await in_flight.wait()
    publisher.emit(delta("b"))
    assert await publisher.close("completed")
    written = [orjson.loads(e[b"c"])["delta"] for e in await entries(redis, "t-flight") if b"c" in e]
    assert "".join(written) == "a b"


async def test_a_write_tells_the_owner_that_someone_asked_the_turn_to_stop(redis: Redis) -> None:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-stop", "s", "alice")
    asked = asyncio.Event()
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=0.0), "t-stop", on_cancel_requested=asked.set)
    publisher.emit(delta("a"))
    await asyncio.sleep(0.05)
    assert not asked.is_set()
    await registry.request_cancel("t-stop")  # from another pod
    publisher.emit(delta("b"))
    async with asyncio.timeout(1):
        await asked.wait()
    assert await publisher.close("cancelled")


async def test_the_log_of_a_long_reply_keeps_its_payloads_and_little_else(redis: Redis) -> None:
    # A turn keeps its log for its whole life, so what an entry costs beyond its payload is paid per token of every
    # open stream: an id string per entry was 65 bytes more (RSS per open stream 83 -> 66-72 KB without them).
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-log", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=60.0), "t-log")
    follower = publisher.follow(after="0", heartbeat_seconds=60)
    deltas = [p.TextDelta(id="text-0", delta=f"w{i:04d} ") for i in range(1000)]
    payload = sum(len(p.to_json(d)) for d in deltas) / len(deltas)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for delta in deltas:
            publisher.emit(delta)
            await anext(follower)  # taken at once, as a streaming client does: no delta is merged into another
        per_entry = (tracemalloc.get_traced_memory()[0] - before) / len(deltas)
    finally:
        tracemalloc.stop()
    assert per_entry < payload + 33 + 40, (per_entry, payload)  # the bytes object and its list slot, with room
    await follower.aclose()
    assert await publisher.close("completed")
    assert len(await entries(redis, "t-log")) == 1001


async def test_the_log_keeps_only_what_redis_or_a_follower_here_still_lacks(redis: Redis) -> None:
    """A turn's log held every entry for the turn's whole life: ~100 bytes per token of every open stream (RSS per
    open stream at 100 streams), hundreds of KB for a long reply. Entries in Redis that every follower here has
    taken are dropped; a reconnect here with an older cursor is sent to Redis, which has them all."""
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-trim", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=0.0), "t-trim")
    follower = publisher.follow(after="0", heartbeat_seconds=60)
    tracemalloc.start(10)
    try:
        for i in range(1000):
            publisher.emit(p.TextDelta(id="text-0", delta=f"w{i:04d} "))
            await anext(follower)
            await asyncio.sleep(0)  # the writer's turn
        await asyncio.sleep(0.05)  # the last write has its reply
        # What the publisher's calls allocated and still hold (the writer's pipeline buffers are the pod's, not the
        # turn's, and come from the writer's task).
        held = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, "*/publisher.py", all_frames=True)])
    finally:
        tracemalloc.stop()
    kept = sum(stat.size for stat in held.statistics("filename"))
    assert kept < 5_000, kept  # 1,000 entries of ~50 bytes were ~100 KB kept
    assert not publisher.serves("0")  # a reconnect from the start reads Redis
    assert publisher.serves(entry_id("t-trim", 1000))  # the follower's own cursor is still served here
    late = publisher.follow(after=entry_id("t-trim", 1000), heartbeat_seconds=60)
    publisher.emit(p.TextEnd(id="text-0"))
    async with asyncio.timeout(1):
        assert await anext(late) == (entry_id("t-trim", 1001), p.to_json(p.TextEnd(id="text-0")))
        assert (await anext(follower))[0] == entry_id("t-trim", 1001)
    with pytest.raises(LookupError):  # a cursor not served here is refused, never answered with other entries
        await anext(publisher.follow(after="0", heartbeat_seconds=60))
    assert await publisher.close("completed")
    assert len(await entries(redis, "t-trim")) == 1002


async def test_the_log_keeps_what_no_follower_here_has_taken_yet(redis: Redis) -> None:
    """The request that started a turn follows it a moment after its first chunks are written: they are still here
    for it (no Redis read for its first token), and so is anything a slow follower has not taken."""
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-keep", "s", "alice")
    publisher = TurnPublisher(ChunkWriter(registry, window_seconds=0.0), "t-keep")
    publisher.emit(p.TextStart(id="text-0"))
    publisher.emit(delta("a"))
    await asyncio.sleep(0.05)
    assert len(await entries(redis, "t-keep")) == 2  # written
    assert publisher.serves("0")
    first = publisher.follow(after="0", heartbeat_seconds=60)
    slow = publisher.follow(after="0", heartbeat_seconds=60)
    async with asyncio.timeout(1):
        assert [(await anext(first))[1] for _ in range(2)] == [
            p.to_json(p.TextStart(id="text-0")),
            p.to_json(delta("a")),
        ]
    publisher.emit(p.TextEnd(id="text-0"))
    await asyncio.sleep(0.05)  # written, taken by `first`; `slow` has taken nothing
    async with asyncio.timeout(1):
        assert (await anext(first))[1] == p.to_json(p.TextEnd(id="text-0"))
        assert [(await anext(slow))[1] for _ in range(3)] == [
            p.to_json(p.TextStart(id="text-0")),
            p.to_json(delta("a")),
            p.to_json(p.TextEnd(id="text-0")),
        ]
    assert await publisher.close("completed")


async def test_the_turns_of_a_pod_are_written_together_and_one_refused_write_spares_the_others(redis: Redis) -> None:
    class CountingRegistry(TurnRegistry):
        batches: list[int] = []

        async def publish_many(self, writes: Sequence[ChunkWrite]) -> list[Published | Exception]:
            CountingRegistry.batches.append(len(writes))
            return await super().publish_many(writes)

    registry = CountingRegistry(redis, ttl_seconds=600, lease_seconds=30)
    writer = ChunkWriter(registry, window_seconds=0.2)
    names = [f"t-pod-{i}" for i in range(5)]
    for name in names:
        await registry.create(name, "s", "alice")
    await redis.delete(keys.turn_events(names[0]))
    await redis.set(keys.turn_events(names[0]), "not a stream")  # this turn's write is refused (WRONGTYPE)
    publishers = [TurnPublisher(writer, name) for name in names]
    for i in range(20):  # a token every 10 ms on every turn for 0.2 s
        for publisher in publishers:
            publisher.emit(delta(f"{i} "))
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.25)  # the last window's write
    assert max(CountingRegistry.batches) == 5  # every turn in each write
    assert len(CountingRegistry.batches) <= 3  # one at once, then one per window
    for name in names[1:]:
        written = [orjson.loads(e[b"c"])["delta"] for e in await entries(redis, name)]
        assert "".join(written) == "".join(f"{i} " for i in range(20))
    for publisher in publishers[1:]:
        assert await publisher.close("completed")
    await writer.close()
