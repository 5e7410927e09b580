"""The turn registry and the recovery of turns whose owner died, against a real Redis (and Postgres for `reap`)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from backend import keys
from backend.chat import protocol as p
from backend.chat.error_codes import error_part
from backend.chat.open_parts import CUT_INPUT_TEXT, NO_OUTPUT_TEXT
from backend.chat.recovery import LOST_OWNER_TEXT, LOST_TAIL_TEXT, closing_chunks, explain_lost_tail, reap
from backend.chat.tokens import TokenCounter
from backend.chat.turn_state import step_key
from backend.store.cache import SessionCache
from backend.store.models import NewMessage
from backend.store.postgres import ChatRepository, create_pool
from backend.store.sessions import SessionStore
from backend.streams.active import ActiveTurns
from backend.streams.turns import TurnRegistry, TurnVanished, entry_id, is_owners_entry, position_of
from tests.conftest import REDIS_URL
from tests.protocol_check import check_sequence

INTERRUPTED = error_part("interrupted")
"""The `data-error` part before the `error` of a turn closed in its owner's place."""


@pytest.fixture
def registry(redis: Redis) -> TurnRegistry:
    return TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)


def chunk(i: int) -> bytes:
    return p.to_json(p.TextDelta(id="text-0", delta=f"{i} "))


async def collect(entries: AsyncIterator[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    return [entry async for entry in entries]


async def stream_entries(redis: Redis, turn_id: str) -> list[dict[bytes, bytes]]:
    return [fields for _, fields in await redis.xrange(keys.turn_events(turn_id))]


# --- replay -----------------------------------------------------------------------------------------------


async def test_replay_of_a_long_turn_is_complete_and_ordered(registry: TurnRegistry) -> None:
    await registry.create("t-long", "s", "alice")
    payloads = [chunk(i) for i in range(10_000)]
    for start in range(0, len(payloads), 500):
        await registry.publish("t-long", payloads[start : start + 500])
    assert await registry.finish("t-long", "completed")

    async with asyncio.timeout(30):
        entries = await collect(registry.follow("t-long", heartbeat_seconds=30))
    assert [c for _, c in entries] == payloads  # no cap, no gap, no heartbeat, in order
    ids = [tuple(map(int, cursor.split("-"))) for cursor, _ in entries]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


async def test_reconnect_to_a_finished_turn_returns_at_once(registry: TurnRegistry) -> None:
    await registry.create("t-done", "s", "alice")
    await registry.publish("t-done", [chunk(0), chunk(1)])
    assert await registry.finish("t-done", "completed", [p.to_json(p.Finish(finish_reason="stop"))])

    # A heartbeat of 30s under a 5s budget: the replay must end on the `end` entry, not on an idle tick.
    started = time.monotonic()
    async with asyncio.timeout(5):
        everything = await collect(registry.follow("t-done", heartbeat_seconds=30))
        last = everything[-1][0]
        after_last = await collect(registry.follow("t-done", after=last, heartbeat_seconds=30))
    assert [c for _, c in everything] == [chunk(0), chunk(1), p.to_json(p.Finish(finish_reason="stop"))]
    assert after_last == []
    print(f"two reconnects to a finished turn took {time.monotonic() - started:.4f}s")


async def test_follow_after_a_cursor_yields_exactly_the_later_entries(registry: TurnRegistry) -> None:
    await registry.create("t-cur", "s", "alice")
    await registry.publish("t-cur", [chunk(i) for i in range(20)])
    await registry.finish("t-cur", "completed")
    full = await collect(registry.follow("t-cur", heartbeat_seconds=30))
    for k in (0, 1, 7, 19):
        rest = await collect(registry.follow("t-cur", after=full[k][0], heartbeat_seconds=30))
        assert rest == full[k + 1 :]


async def test_follow_is_live_until_the_end(registry: TurnRegistry) -> None:
    await registry.create("t-live", "s", "alice")
    follower = asyncio.create_task(collect(registry.follow("t-live", heartbeat_seconds=30)))
    await asyncio.sleep(0.05)
    await registry.publish("t-live", [chunk(0)])
    await registry.publish("t-live", [chunk(1)])
    await registry.finish("t-live", "completed", [chunk(2)])
    async with asyncio.timeout(5):
        entries = await follower
    assert [c for _, c in entries] == [chunk(0), chunk(1), chunk(2)]


async def test_follow_heartbeats_while_idle_and_stops_when_told(registry: TurnRegistry) -> None:
    await registry.create("t-idle", "s", "alice")
    await registry.publish("t-idle", [chunk(0)])
    ticks = 0

    async def on_idle() -> bool:
        nonlocal ticks
        ticks += 1
        if ticks == 3:  # like a follower that found the owner dead and closed the turn itself
            await registry.finish("t-idle", "interrupted", [chunk(1)])
            return True
        return False

    async with asyncio.timeout(10):
        entries = await collect(registry.follow("t-idle", heartbeat_seconds=0.05, on_idle=on_idle))
    assert [c for _, c in entries] == [chunk(0), None, None, None, chunk(1)]


async def test_follow_outlasts_the_redis_client_socket_timeout(registry: TurnRegistry) -> None:
    """Regression: XREAD BLOCK longer than the client's socket timeout (redis-py's default is 5s) raised
    `TimeoutError` instead of producing a heartbeat, killing every stream that was idle for 5s."""
    client = Redis.from_url(REDIS_URL, socket_timeout=1.5)
    try:
        strict = TurnRegistry(client, ttl_seconds=600, lease_seconds=30)
        await strict.create("t-quiet", "s", "alice")
        entries = strict.follow("t-quiet", heartbeat_seconds=2.0)
        async with asyncio.timeout(10):
            assert await anext(entries) == ("", None)
            await strict.finish("t-quiet", "completed", [chunk(0)])
            assert [e async for e in entries][-1][1] == chunk(0)
    finally:
        await client.aclose()


async def test_follow_notices_within_a_second_that_the_turns_keys_vanished(
    registry: TurnRegistry, redis: Redis
) -> None:
    """Regression: after a Redis flush or restart (the turn's keys gone, no `end` will ever come) a follower only
    found out at its next heartbeat tick (15 s by default), so its client waited that long for the stream's end."""
    await registry.create("t-gone", "s", "alice")
    await registry.publish("t-gone", [chunk(0)])
    entries = registry.follow("t-gone", heartbeat_seconds=30)
    assert (await anext(entries))[1] == chunk(0)
    await redis.delete(keys.turn_meta("t-gone"), keys.turn_events("t-gone"))  # what a restart without data does
    started = time.monotonic()
    with pytest.raises(TurnVanished):
        async with asyncio.timeout(5):
            await anext(entries)
    assert time.monotonic() - started < 1.5


async def test_entry_ids_name_their_turn(registry: TurnRegistry, redis: Redis) -> None:
    """Every id of a turn's stream, the ones Redis assigns included, carries the turn's base: a cursor of one turn
    is never taken for a position in another."""
    await registry.create("t-ids", "s", "alice")
    await registry.publish("t-ids", [chunk(0), chunk(1)], ids=[entry_id("t-ids", 1), entry_id("t-ids", 2)])
    await registry.finish("t-ids", "interrupted", [chunk(2)])  # a reaper's entries: ids chosen by Redis (`*`)
    ids = [raw.decode() for raw, _ in await redis.xrange(keys.turn_events("t-ids"))]
    assert [position_of("t-ids", i) for i in ids] == [1, 2, 3, 4]
    assert position_of("t-ids", "0") == 0
    assert position_of("t-other", ids[1]) is None
    assert position_of("t-ids", "1-2") is None


# --- the end, written once --------------------------------------------------------------------------------


async def test_finish_writes_exactly_one_end_when_writers_race(registry: TurnRegistry, redis: Redis) -> None:
    await registry.create("t-race", "s", "alice")
    await registry.publish("t-race", [chunk(0)])
    finish = p.to_json(p.Finish(finish_reason="stop"))
    statuses = ["completed", "interrupted"] * 5
    results = await asyncio.gather(*(registry.finish("t-race", s, [finish]) for s in statuses))  # type: ignore[arg-type]

    assert results.count(True) == 1
    entries = await stream_entries(redis, "t-race")
    assert sum(1 for e in entries if e.get(b"c") == finish) == 1
    assert sum(1 for e in entries if b"end" in e) == 1
    assert b"end" in entries[-1]
    info = await registry.info("t-race")
    assert info is not None and info.status == statuses[results.index(True)]
    assert await redis.zscore(keys.TURN_LEASES, "t-race") is None


async def test_finish_of_an_ended_turn_writes_nothing(registry: TurnRegistry, redis: Redis) -> None:
    await registry.create("t-once", "s", "alice")
    assert await registry.finish("t-once", "cancelled", [chunk(0)])
    before = await stream_entries(redis, "t-once")
    assert not await registry.finish("t-once", "completed", [chunk(1)])
    assert await stream_entries(redis, "t-once") == before
    info = await registry.info("t-once")
    assert info is not None and info.status == "cancelled"


async def test_finish_of_an_unknown_turn_writes_nothing(registry: TurnRegistry, redis: Redis) -> None:
    assert not await registry.finish("t-none", "interrupted", [chunk(0)])
    assert await redis.exists(keys.turn_events("t-none"), keys.turn_meta("t-none")) == 0


async def test_finish_drops_the_lease_and_sends_along_in_one_round_trip(registry: TurnRegistry, redis: Redis) -> None:
    session_id = uuid.uuid4()
    active = ActiveTurns(redis, lease_seconds=60)
    assert await active.claim(session_id, "t-along")
    await registry.create("t-along", str(session_id), "alice")
    # As if Redis had lost the release script (a restart): the batch loads it and is sent again.
    active._release.sha = "0" * 40
    assert await registry.finish(
        "t-along", "completed", [chunk(0)], along=[active.queue_release(session_id, "t-along")]
    )
    assert await registry.lease_deadline("t-along") is None
    assert await active.current(session_id) is None
    assert [e.get(b"end") for e in await stream_entries(redis, "t-along")] == [None, b"completed"]


async def test_an_end_redis_refuses_keeps_the_turn_leased(registry: TurnRegistry, redis: Redis) -> None:
    """The lease goes in the end's round trip; when the end itself fails, the turn is listed again, so that it is
    closed like a turn whose owner died instead of staying `running` with nobody to close it."""
    await registry.create("t-refused", "s", "alice")
    await redis.set(keys.turn_events("t-refused"), "not a stream")  # every XADD of the end fails
    with pytest.raises(ResponseError):
        await registry.finish("t-refused", "completed", [chunk(0)], ids=[entry_id("t-refused", 1)])
    info = await registry.info("t-refused")
    assert info is not None and info.status == "running"
    assert await registry.lease_deadline("t-refused") is not None


# --- leases, cancellation, expiry -------------------------------------------------------------------------


async def backdate_lease(redis: Redis, turn_id: str) -> None:
    """As if the lease had been granted long ago and never renewed."""
    await redis.zadd(keys.TURN_LEASES, {turn_id: time.time() - 1}, xx=True)


async def lease_lapsed(registry: TurnRegistry, turn_id: str) -> bool | None:
    """Whether the turn's lease has lapsed; None when Redis holds no lease for it."""
    deadline = await registry.lease_deadline(turn_id)
    return None if deadline is None else deadline < time.time()


async def test_renew_keeps_a_lease_and_expired_finds_a_lapsed_one(registry: TurnRegistry, redis: Redis) -> None:
    await registry.create("t-kept", "s", "alice")
    await registry.create("t-lapsed", "s", "alice")
    assert await registry.expired() == []
    assert await lease_lapsed(registry, "t-kept") is False

    await backdate_lease(redis, "t-kept")
    await backdate_lease(redis, "t-lapsed")
    assert sorted(await registry.expired()) == ["t-kept", "t-lapsed"]
    await registry.renew(["t-kept"])

    assert await registry.expired() == ["t-lapsed"]
    assert await lease_lapsed(registry, "t-kept") is False
    assert await lease_lapsed(registry, "t-lapsed") is True


async def test_a_short_lease_lapses_without_renewal(redis: Redis) -> None:
    short = TurnRegistry(redis, ttl_seconds=600, lease_seconds=0.05)
    await short.create("t-short", "s", "alice")
    await asyncio.sleep(0.1)
    assert await short.expired() == ["t-short"]
    assert await lease_lapsed(short, "t-short") is True


async def test_renew_does_not_bring_back_an_ended_turn(registry: TurnRegistry) -> None:
    await registry.create("t-ended", "s", "alice")
    await registry.finish("t-ended", "completed")
    await registry.renew(["t-ended"])
    assert await lease_lapsed(registry, "t-ended") is None  # no lease at all
    assert await registry.expired() == []


async def test_cancel_requests_are_seen_by_the_owner(registry: TurnRegistry) -> None:
    await registry.create("t-a", "s", "alice")
    await registry.create("t-b", "s", "alice")
    assert await registry.cancel_requested(["t-a", "t-b"]) == set()
    await registry.request_cancel("t-b")
    assert await registry.cancel_requested(["t-a", "t-b"]) == {"t-b"}
    assert await registry.cancel_requested([]) == set()


async def test_an_expired_turn_leaves_a_tombstone(registry: TurnRegistry, redis: Redis) -> None:
    await registry.create("t-old", "s", "alice")
    await registry.finish("t-old", "completed", [chunk(0)])
    info = await registry.info("t-old")
    assert info is not None and (info.session_id, info.user_id) == ("s", "alice")

    await redis.delete(keys.turn_meta("t-old"), keys.turn_events("t-old"))
    assert await registry.info("t-old") is None
    assert await registry.owner_of_expired("t-old") == "alice"
    assert await registry.owner_of_expired("t-never") is None


# --- recovery ---------------------------------------------------------------------------------------------


def test_closing_an_open_text_part() -> None:
    chunks: list[p.Chunk] = [
        p.Start(message_id="m"),
        p.StartStep(),
        p.TextStart(id="text-0"),
        p.TextDelta(id="text-0", delta="Hello "),
        p.TextDelta(id="text-0", delta="wor"),
    ]
    closing, partial = closing_chunks(chunks)
    assert closing == [
        p.TextEnd(id="text-0"),
        p.FinishStep(),
        INTERRUPTED,
        p.Error(error_text=LOST_OWNER_TEXT),
        p.Finish(finish_reason="error"),
    ]
    assert partial == "Hello wor"


def test_closing_an_open_step_without_open_text() -> None:
    chunks: list[p.Chunk] = [
        p.Start(message_id="m"),
        p.StartStep(),
        p.TextStart(id="text-0"),
        p.TextDelta(id="text-0", delta="Let me check."),
        p.TextEnd(id="text-0"),
        p.ToolInputStart(tool_call_id="c0", tool_name="calculate"),
        p.ToolInputAvailable(tool_call_id="c0", tool_name="calculate", input={"expression": "2+2"}),
        p.ToolOutputAvailable(tool_call_id="c0", output=4),
    ]
    closing, partial = closing_chunks(chunks)
    assert closing == [
        p.FinishStep(),
        INTERRUPTED,
        p.Error(error_text=LOST_OWNER_TEXT),
        p.Finish(finish_reason="error"),
    ]
    assert partial == "Let me check."


def test_closing_ends_the_tool_calls_a_dead_owner_left_open() -> None:
    """A dead owner's calls are closed too: one whose arguments were streaming gets `tool-input-error` with the raw
    text received, one whose tool was running gets `tool-output-error`; no client shows a tool running forever."""
    chunks: list[p.Chunk] = [
        p.Start(message_id="m"),
        p.StartStep(),
        p.ToolInputStart(tool_call_id="c1", tool_name="calculate"),
        p.ToolInputDelta(tool_call_id="c1", input_text_delta='{"expression": '),
        p.ToolInputAvailable(tool_call_id="c1", tool_name="calculate", input={"expression": "1+1"}),
        p.ToolInputStart(tool_call_id="c2", tool_name="lookup"),
        p.ToolInputDelta(tool_call_id="c2", input_text_delta='{"id": '),
        p.ToolInputDelta(tool_call_id="c2", input_text_delta="7"),
        p.TextStart(id="text-0"),
        p.TextDelta(id="text-0", delta="meanwhile"),
    ]
    closing, _ = closing_chunks(chunks)
    assert closing == [
        p.TextEnd(id="text-0"),
        p.ToolInputError(tool_call_id="c2", tool_name="lookup", input='{"id": 7', error_text=CUT_INPUT_TEXT),
        p.ToolOutputError(tool_call_id="c1", error_text=NO_OUTPUT_TEXT),
        p.FinishStep(),
        INTERRUPTED,
        p.Error(error_text=LOST_OWNER_TEXT),
        p.Finish(finish_reason="error"),
    ]
    assert check_sequence([*chunks, *closing]) == []


def test_closing_a_stream_whose_finish_was_written_adds_nothing() -> None:
    """The owner's flusher may have written `finish` before it died (the `end` entry comes with `close`)."""
    chunks: list[p.Chunk] = [p.Start(message_id="m"), p.StartStep(), p.FinishStep(), p.Finish(finish_reason="stop")]
    assert closing_chunks(chunks) == ([], "")


def test_closing_with_nothing_open() -> None:
    first_step: list[p.Chunk] = [
        p.StartStep(),
        p.TextStart(id="text-0"),
        p.TextDelta(id="text-0", delta="done already"),
        p.TextEnd(id="text-0"),
        p.FinishStep(),
    ]
    for chunks in ([], [p.Start(message_id="m")], [p.Start(message_id="m"), *first_step]):
        closing, partial = closing_chunks(chunks)
        assert closing == [INTERRUPTED, p.Error(error_text=LOST_OWNER_TEXT), p.Finish(finish_reason="error")]
        assert partial == ""  # a finished step was stored by its owner


def test_closing_keeps_only_the_unfinished_step_text() -> None:
    chunks: list[p.Chunk] = [
        p.StartStep(),
        p.TextStart(id="text-0"),
        p.TextDelta(id="text-0", delta="stored by the owner"),
        p.TextEnd(id="text-0"),
        p.FinishStep(),
        p.StartStep(),
        p.TextStart(id="text-1"),
        p.TextDelta(id="text-1", delta="lost with it"),
    ]
    closing, partial = closing_chunks(chunks)
    assert closing[0] == p.TextEnd(id="text-1")
    assert partial == "lost with it"


@pytest.fixture
async def store(db: asyncpg.Connection, migrated_database: str, redis: Redis) -> AsyncIterator[SessionStore]:
    pool = await create_pool(migrated_database, min_size=1, max_size=5)
    yield SessionStore(ChatRepository(pool), SessionCache(redis, ttl_seconds=60))
    await pool.close()


async def test_reap_closes_a_dead_owners_turn_once(registry: TurnRegistry, store: SessionStore, redis: Redis) -> None:
    session = await store.create("alice", title="t")
    await store.append(session.id, [NewMessage("user", "hi")])
    active = ActiveTurns(redis, lease_seconds=600)
    turn_id = str(uuid.uuid4())
    assert await active.claim(session.id, turn_id)
    await registry.create(turn_id, str(session.id), "alice")
    opening: list[p.Chunk] = [
        p.Start(message_id="m"),
        p.StartStep(),
        p.TextStart(id="text-0"),
        p.TextDelta(id="text-0", delta="half a "),
        p.TextDelta(id="text-0", delta="reply"),
    ]
    await registry.publish(turn_id, [p.to_json(c) for c in opening])
    counter = TokenCounter("gpt-4o-mini")

    results = await asyncio.gather(
        *(reap(turn_id, registry=registry, store=store, active=active, counter=counter) for _ in range(5))
    )

    assert results.count(True) == 1
    streamed = [orjson.loads(c) for c in await registry.chunks(turn_id)]
    assert [c["type"] for c in streamed[len(opening) :]] == ["text-end", "finish-step", "data-error", "error", "finish"]
    info = await registry.info(turn_id)
    assert info is not None and info.status == "interrupted"
    messages = await store.messages(session.id)
    assert [(m.role, m.content) for m in messages] == [("user", "hi"), ("assistant", "half a reply\n\n[interrupted]")]
    assert await active.current(session.id) is None
    assert await registry.expired() == []


async def test_reap_leaves_an_ended_turn_alone(registry: TurnRegistry, store: SessionStore, redis: Redis) -> None:
    session = await store.create("alice", title="t")
    active = ActiveTurns(redis, lease_seconds=600)
    await registry.create("t-fine", str(session.id), "alice")
    await registry.publish("t-fine", [p.to_json(p.TextStart(id="text-0")), chunk(0)])
    await registry.finish("t-fine", "completed")
    before = await stream_entries(redis, "t-fine")
    counter = TokenCounter("gpt-4o-mini")
    assert not await reap("t-fine", registry=registry, store=store, active=active, counter=counter)
    assert await stream_entries(redis, "t-fine") == before
    assert await store.messages(session.id) == []


async def dead_owner_turn(
    registry: TurnRegistry, store: SessionStore, redis: Redis, published: list[p.Chunk]
) -> tuple[uuid.UUID, str, ActiveTurns]:
    """A session whose turn's owner died after publishing `published` (with the owner's ids, `<base>-1`, ...)."""
    session = await store.create("alice", title="t")
    await store.append(session.id, [NewMessage("user", "hi")])
    active = ActiveTurns(redis, lease_seconds=600)
    turn_id = str(uuid.uuid4())
    assert await active.claim(session.id, turn_id)
    await registry.create(turn_id, str(session.id), "alice")
    ids = [entry_id(turn_id, i) for i in range(1, len(published) + 1)]
    await registry.publish(turn_id, [p.to_json(c) for c in published], ids=ids)
    return session.id, turn_id, active


def text_step(text_id: str, *deltas: str, ended: bool = True) -> list[p.Chunk]:
    chunks: list[p.Chunk] = [p.StartStep(), p.TextStart(id=text_id)]
    chunks += [p.TextDelta(id=text_id, delta=d) for d in deltas]
    return [*chunks, p.TextEnd(id=text_id), p.FinishStep()] if ended else chunks


async def test_reap_stores_the_last_steps_text_even_when_an_earlier_step_began_alike(
    registry: TurnRegistry, store: SessionStore, redis: Redis
) -> None:
    """Regression: the partial was compared by prefix with the stored assistant messages since the user's; a step
    whose text began like the previous step's ("Let me ...") was taken for stored and lost."""
    session_id, turn_id, active = await dead_owner_turn(
        registry,
        store,
        redis,
        [
            p.Start(message_id="m"),
            *text_step("text-0", "Let me check that."),
            *text_step("text-1", "Let me", ended=False),
        ],
    )
    # What the owner stored of step 0 before it died (with the step's write key).
    await store.append(session_id, [NewMessage("assistant", "Let me check that.", write_key=step_key(turn_id, 0, 0))])
    counter = TokenCounter("gpt-4o-mini")

    assert await reap(turn_id, registry=registry, store=store, active=active, counter=counter)

    replayable = [p.decode(c) for c in await registry.chunks(turn_id)]
    last_step = replayable[max(i for i, c in enumerate(replayable) if isinstance(c, p.StartStep)) :]
    kept_text = "".join(c.delta for c in last_step if isinstance(c, p.TextDelta))
    assert [(m.role, m.content) for m in await store.messages(session_id)] == [
        ("user", "hi"),
        ("assistant", "Let me check that."),
        ("assistant", f"{kept_text}\n\n[interrupted]"),
    ]
    assert kept_text == "Let me"


async def test_reap_stores_nothing_for_a_step_its_owner_stored(
    registry: TurnRegistry, store: SessionStore, redis: Redis
) -> None:
    """The owner stores a step before it publishes the step's end, and died in between: the step's write key is
    stored, so the partial is not stored again (whatever its text)."""
    session_id, turn_id, active = await dead_owner_turn(
        registry, store, redis, [p.Start(message_id="m"), *text_step("text-0", "Forty", ended=False)]
    )
    await store.append(session_id, [NewMessage("assistant", "Forty-two.", write_key=step_key(turn_id, 0, 0))])
    counter = TokenCounter("gpt-4o-mini")
    assert await reap(turn_id, registry=registry, store=store, active=active, counter=counter)
    assert [m.content for m in await store.messages(session_id)] == ["hi", "Forty-two."]


async def test_reap_marks_a_reply_that_had_no_text_yet(
    registry: TurnRegistry, store: SessionStore, redis: Redis
) -> None:
    session_id, turn_id, active = await dead_owner_turn(registry, store, redis, [p.Start(message_id="m")])
    counter = TokenCounter("gpt-4o-mini")
    assert await reap(turn_id, registry=registry, store=store, active=active, counter=counter)
    assert [(m.role, m.content) for m in await store.messages(session_id)] == [
        ("user", "hi"),
        ("assistant", "[interrupted]"),
    ]


async def test_a_client_shown_more_than_was_kept_is_told_so(
    registry: TurnRegistry, store: SessionStore, redis: Redis
) -> None:
    """A client of the owner's pod saw entries up to the 9th from memory; Redis kept the first 5 when the owner
    died. Reconnecting with its cursor it gets `error` (the reason: interrupted, and that what it saw after the
    kept text was not kept) and `finish`, and not the ends of parts it may no longer have open. A client whose
    cursor Redis holds gets the closing chunks as they are."""
    kept: list[p.Chunk] = [p.Start(message_id="m"), *text_step("text-0", "one ", "two ", ended=False)]
    session_id, turn_id, active = await dead_owner_turn(registry, store, redis, kept)
    counter = TokenCounter("gpt-4o-mini")
    assert await reap(turn_id, registry=registry, store=store, active=active, counter=counter)

    async def reconnect(after: str) -> list[p.Chunk]:
        entries = registry.follow(turn_id, after=after, heartbeat_seconds=30)
        async with asyncio.timeout(5):
            followed = await collect(explain_lost_tail(entries, turn_id=turn_id, after=after, registry=registry))
        return [p.decode(c) for _, c in followed if c is not None]

    assert await reconnect(entry_id(turn_id, 9)) == [
        INTERRUPTED,
        p.Error(error_text=LOST_TAIL_TEXT),
        p.Finish(finish_reason="error"),
    ]
    assert await reconnect(entry_id(turn_id, 5)) == [
        p.TextEnd(id="text-0"),
        p.FinishStep(),
        INTERRUPTED,
        p.Error(error_text=LOST_OWNER_TEXT),
        p.Finish(finish_reason="error"),
    ]
    assert (await reconnect("0"))[: len(kept)] == kept
    assert LOST_TAIL_TEXT.startswith("interrupted:") and LOST_OWNER_TEXT.startswith("interrupted:")
    messages = await store.messages(session_id)
    assert messages[-1].content == "one two \n\n[interrupted]"


async def test_a_reapers_entries_come_after_every_id_the_owner_could_have_handed_out(
    registry: TurnRegistry, store: SessionStore, redis: Redis
) -> None:
    """Regression (found merging turn-named cursors with the lost-tail check): the reaper's entries continued the
    owner's sequence (`<base>-6`, …), so a client shown entries up to `<base>-9` from the dead owner's memory skipped
    the closing `error` and `finish` when it resumed from its cursor, and its stream never ended."""
    kept: list[p.Chunk] = [p.Start(message_id="m"), *text_step("text-0", "one ", "two ", ended=False)]
    _, turn_id, active = await dead_owner_turn(registry, store, redis, kept)
    assert await reap(turn_id, registry=registry, store=store, active=active, counter=TokenCounter("gpt-4o-mini"))
    ids = [entry_id_.decode() for entry_id_, _ in await redis.xrange(keys.turn_events(turn_id))]
    closing = ids[len(kept) :]
    assert closing and not any(is_owners_entry(turn_id, i) for i in closing)
    far_ahead = entry_id(turn_id, 10_000)
    followed = await collect(registry.follow(turn_id, after=far_ahead, heartbeat_seconds=30))
    assert [type(p.decode(c)) for _, c in followed if c is not None][-2:] == [p.Error, p.Finish]
