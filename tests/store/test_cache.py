"""The session cache against a real Redis and Postgres: it may be missing, never stale."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from backend import keys
from backend.store.cache import SessionCache
from backend.store.models import MessageRow, NewMessage
from backend.store.postgres import ChatRepository, create_pool
from backend.store.sessions import SessionStore


@pytest.fixture
async def repo(db: asyncpg.Connection, migrated_database: str) -> AsyncIterator[ChatRepository]:
    pool = await create_pool(migrated_database, min_size=1, max_size=10)
    yield ChatRepository(pool)
    await pool.close()


@pytest.fixture
def cache(redis: Redis) -> SessionCache:
    return SessionCache(redis, ttl_seconds=60)


@pytest.fixture
def store(repo: ChatRepository, cache: SessionCache) -> SessionStore:
    return SessionStore(repo, cache)


def texts(messages: list) -> list[str | None]:  # type: ignore[type-arg]
    return [m.content for m in messages]


async def test_append_after_fill_extends_the_cached_list(store: SessionStore, redis: Redis) -> None:
    s = await store.create("alice")
    await store.append(s.id, [NewMessage("user", "one")])
    assert texts(await store.messages(s.id)) == ["one"]  # fills
    await store.append(s.id, [NewMessage("assistant", "two"), NewMessage("user", "three")])
    assert await redis.llen(keys.session_messages(s.id)) == 4  # sentinel + 3: patched, not dropped
    assert texts(await store.messages(s.id)) == ["one", "two", "three"]
    assert texts(await store.messages(s.id, after=1, limit=1)) == ["two"]


async def test_a_fill_from_a_stale_read_never_lands(
    store: SessionStore, cache: SessionCache, repo: ChatRepository
) -> None:
    s = await store.create("alice")
    await store.append(s.id, [NewMessage("user", "one")])
    generation = await cache.generation(s.id)
    stale = await repo.get_messages(s.id)  # a slow reader's view ...
    await store.append(s.id, [NewMessage("assistant", "two")])  # ... then a write commits
    assert await cache.fill_messages(s.id, stale, generation) is False
    assert texts(await store.messages(s.id)) == ["one", "two"]


async def test_out_of_order_append_drops_the_list(store: SessionStore, cache: SessionCache, redis: Redis) -> None:
    s = await store.create("alice")
    await store.append(s.id, [NewMessage("user", "one")])
    await store.messages(s.id)
    stored = await store.append(s.id, [NewMessage("user", "two"), NewMessage("user", "three")])
    await cache.appended(s.id, stored.messages[1:])  # replaying a write out of order
    assert await redis.exists(keys.session_messages(s.id)) == 0
    assert texts(await store.messages(s.id)) == ["one", "two", "three"]


async def test_rename_after_fill_is_visible(store: SessionStore) -> None:
    s = await store.create("alice", title="old")
    assert (await store.get(s.id, "alice")).title == "old"  # fills the session entry
    await store.rename(s.id, "alice", "new")
    assert (await store.get(s.id, "alice")).title == "new"


async def test_usage_update_is_visible_after_fill(store: SessionStore) -> None:
    s = await store.create("alice")
    await store.get(s.id, "alice")
    await store.append(s.id, [], prompt_tokens=7, completion_tokens=1)
    got = await store.get(s.id, "alice")
    assert (got.prompt_tokens, got.completion_tokens) == (7, 1)


async def test_entries_expire(repo: ChatRepository, redis: Redis) -> None:
    store = SessionStore(repo, SessionCache(redis, ttl_seconds=1))
    s = await store.create("alice")
    await store.append(s.id, [NewMessage("user", "one")])
    await store.messages(s.id)
    assert await redis.pttl(keys.session_messages(s.id)) <= 1000
    await asyncio.sleep(1.1)
    assert await redis.exists(keys.session_messages(s.id)) == 0
    assert texts(await store.messages(s.id)) == ["one"]


async def test_redis_flushed_midway_loses_nothing(
    store: SessionStore, cache: SessionCache, repo: ChatRepository, redis: Redis
) -> None:
    s = await store.create("alice")
    await store.append(s.id, [NewMessage("user", "one")])
    generation = await cache.generation(s.id)
    stale = await repo.get_messages(s.id)
    await redis.flushdb()
    await store.append(s.id, [NewMessage("assistant", "two")])
    assert await cache.fill_messages(s.id, stale, generation) is False
    assert texts(await store.messages(s.id)) == ["one", "two"]
    await redis.flushdb()
    assert texts(await store.messages(s.id)) == ["one", "two"]
    await store.append(s.id, [NewMessage("user", "three")])
    assert texts(await store.messages(s.id)) == ["one", "two", "three"]


async def test_concurrent_writers_and_readers_converge(store: SessionStore) -> None:
    s = await store.create("alice")

    async def writer(w: int) -> None:
        for i in range(15):
            await store.append(s.id, [NewMessage("user", f"{w}-{i}")])

    async def reader() -> None:
        for _ in range(30):
            page = await store.messages(s.id)
            assert [m.sequence for m in page] == list(range(1, len(page) + 1))

    await asyncio.gather(*(writer(w) for w in range(6)), *(reader() for _ in range(4)))
    final = await store.messages(s.id)
    assert [m.sequence for m in final] == list(range(1, 91))


async def test_redis_down_falls_back_to_postgres(repo: ChatRepository) -> None:
    from tests.helpers import free_port

    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    store = SessionStore(repo, SessionCache(dead, ttl_seconds=60))
    s = await store.create("alice")
    await store.append(s.id, [NewMessage("user", "one")])
    assert texts(await store.messages(s.id)) == ["one"]
    assert [r["content"] for r in await store.message_rows(s.id)] == ["one"]
    assert (await store.get(s.id, "alice")).id == s.id
    await store.close()
    await dead.aclose()


async def test_a_new_session_is_cached_with_an_empty_list(store: SessionStore, redis: Redis) -> None:
    s = await store.create("alice")
    assert await redis.llen(keys.session_messages(s.id)) == 1  # the sentinel: cached, no messages
    await store.append(s.id, [NewMessage("user", "one")])
    assert await redis.llen(keys.session_messages(s.id)) == 2  # extended in place, no refill needed
    assert texts(await store.messages(s.id)) == ["one"]


class CountingRepository(ChatRepository):
    """Counts the session reads that reach Postgres."""

    session_reads = 0

    async def get_session(self, session_id):  # type: ignore[no-untyped-def]
        self.session_reads += 1
        return await super().get_session(session_id)


async def test_an_append_keeps_the_session_cached_with_its_new_totals(
    migrated_database: str, db: asyncpg.Connection, redis: Redis
) -> None:
    pool = await create_pool(migrated_database, min_size=1, max_size=2)
    repo = CountingRepository(pool)
    store = SessionStore(repo, SessionCache(redis, ttl_seconds=60))
    try:
        s = await store.create("alice", title="t")
        for turn in range(1, 4):  # a user message, then a step with usage: a turn's appends
            await store.append(s.id, [NewMessage("user", f"q{turn}", token_count=2)])
            assert (await store.get(s.id, "alice")).message_count == 2 * turn - 1
            await store.append(
                s.id, [NewMessage("assistant", f"a{turn}", token_count=3)], prompt_tokens=10, completion_tokens=4
            )
            got = await store.get(s.id, "alice")
            assert (got.message_count, got.prompt_tokens, got.completion_tokens) == (2 * turn, 10 * turn, 4 * turn)
            assert got.live_tokens == 5 * turn
        assert repo.session_reads == 0  # every read was served by Redis
        assert await repo.get_session(s.id) == await store.get(s.id, "alice")  # the cached row is Postgres' row
    finally:
        await pool.close()


async def test_an_older_append_never_overwrites_a_newer_cached_row(
    store: SessionStore, cache: SessionCache, repo: ChatRepository
) -> None:
    s = await store.create("alice")
    first = await repo.append_messages(s.id, [NewMessage("user", "one")], prompt_tokens=1)
    second = await repo.append_messages(s.id, [NewMessage("assistant", "two")], prompt_tokens=2)
    # Their cache updates arrive in the opposite order of their commits.
    await cache.appended(s.id, second.messages, second.session)
    await cache.appended(s.id, first.messages, first.session)
    got = await store.get(s.id, "alice")
    assert (got.message_count, got.prompt_tokens) == (2, 3)
    assert got == await repo.get_session(s.id)


async def test_a_late_append_does_not_refill_an_entry_a_later_write_dropped(
    store: SessionStore, cache: SessionCache, repo: ChatRepository, redis: Redis
) -> None:
    s = await store.create("alice", title="old")
    appended = await repo.append_messages(s.id, [NewMessage("user", "one")])  # commits first ...
    await store.rename(s.id, "alice", "new")  # ... a rename commits and drops the cached row ...
    await cache.appended(s.id, appended.messages, appended.session)  # ... and only then the append's update lands
    assert await redis.exists(keys.session_meta(s.id)) == 0
    got = await store.get(s.id, "alice")
    assert (got.title, got.message_count) == ("new", 1)


async def test_a_usage_only_append_drops_the_row_and_keeps_the_list(store: SessionStore, redis: Redis) -> None:
    s = await store.create("alice")
    await store.append(s.id, [NewMessage("user", "one")])
    await store.append(s.id, [], prompt_tokens=5)
    assert await redis.exists(keys.session_meta(s.id)) == 0  # no message count to order it by: dropped
    assert await redis.llen(keys.session_messages(s.id)) == 2  # no message changed: kept
    assert (await store.get(s.id, "alice")).prompt_tokens == 5


async def test_a_resent_message_leaves_the_cache_alone(store: SessionStore, redis: Redis) -> None:
    s = await store.create("alice")
    await store.append(s.id, [NewMessage("user", "one", client_message_id="c-1")])
    generation = await redis.get(keys.session_generation(s.id))
    again = await store.append(s.id, [NewMessage("user", "one", client_message_id="c-1")])
    assert again.duplicates == {"c-1"}
    assert await redis.get(keys.session_generation(s.id)) == generation  # nothing was written
    assert await redis.exists(keys.session_meta(s.id)) == 1
    assert texts(await store.messages(s.id)) == ["one"]


async def test_concurrent_appenders_leave_the_newest_row_cached(store: SessionStore, repo: ChatRepository) -> None:
    s = await store.create("alice")

    async def writer(w: int) -> None:
        for i in range(10):
            await store.append(s.id, [NewMessage("assistant", f"{w}-{i}")], prompt_tokens=1)
            got = await store.get(s.id, "alice")
            assert got.message_count == got.prompt_tokens  # a row as one commit left it, never a mix

    await asyncio.gather(*(writer(w) for w in range(8)))
    got = await store.get(s.id, "alice")
    assert got == await repo.get_session(s.id)
    assert got.message_count == 80


async def test_message_rows_match_the_messages_cached_or_not(store: SessionStore, redis: Redis) -> None:
    s = await store.create("alice")
    call = {"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "é"}'}}
    await store.append(
        s.id,
        [
            NewMessage("user", "hi", client_message_id="m1", token_count=3),
            NewMessage("assistant", None, tool_calls=[call], token_count=9),
            NewMessage("tool", '{"ok": true}', tool_call_id="c1", name="lookup", token_count=5),
            NewMessage("assistant", None, refusal="no", token_count=2),
            NewMessage("system", "note", token_count=4),
        ],
    )
    expected = [m.row() for m in await store.messages(s.id)]  # fills the cache
    assert [r["role"] for r in expected] == ["user", "assistant", "tool", "assistant", "system"]

    def fields(rows: list[MessageRow]) -> list[dict[str, object]]:
        return [{k: r[k] for k in MessageRow.__annotations__} for r in rows]

    assert fields(await store.message_rows(s.id)) == expected  # from the cached list
    assert fields(await store.message_rows(s.id, after=2)) == expected[2:]
    await redis.delete(keys.session_messages(s.id))
    assert fields(await store.message_rows(s.id, after=1)) == expected[1:]  # from Postgres (and fills again)
    assert await redis.exists(keys.session_messages(s.id))
