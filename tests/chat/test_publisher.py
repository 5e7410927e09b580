"""The coalescing turn publisher against a real Redis."""

from __future__ import annotations

import asyncio

import orjson
from redis.asyncio import Redis

from backend import keys
from backend.chat import protocol as p
from backend.chat.publisher import TurnPublisher
from backend.streams.turns import TurnRegistry


async def entries(redis: Redis, turn_id: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(keys.turn_events(turn_id))]


async def test_close_while_the_flusher_waits_out_its_window(redis: Redis) -> None:
    """Regression: `close` during the flusher's wait for its window hung forever (the flusher cleared the wake-up
    that `close` had set, then waited for another), so the turn never wrote its end and its stream never ended."""
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-pub", "s", "alice")
    publisher = TurnPublisher(registry, "t-pub", window_seconds=1.0)
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


async def test_coalesces_deltas_and_writes_the_rest_with_the_end(redis: Redis) -> None:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    await registry.create("t-co", "s", "alice")
    publisher = TurnPublisher(registry, "t-co", window_seconds=10.0)
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
