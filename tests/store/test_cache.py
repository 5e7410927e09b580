"""The session cache against a real Redis and Postgres: it may be missing, never stale."""

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest
from redis.asyncio import Redis

from backend import keys
from backend.store.cache import SessionCache
from backend.store.models import NewMessage
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
    from tests.conftest import free_port

    dead = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    store = SessionStore(repo, SessionCache(dead, ttl_seconds=60))
    s = await store.create("alice")
    await store.append(s.id, [NewMessage("user", "one")])
    assert texts(await store.messages(s.id)) == ["one"]
    assert (await store.get(s.id, "alice")).id == s.id
    await store.close()
    await dead.aclose()


async def test_a_new_session_is_cached_with_an_empty_list(store: SessionStore, redis: Redis) -> None:
    s = await store.create("alice")
    assert await redis.llen(keys.session_messages(s.id)) == 1  # the sentinel: cached, no messages
    await store.append(s.id, [NewMessage("user", "one")])
    assert await redis.llen(keys.session_messages(s.id)) == 2  # extended in place, no refill needed
    assert texts(await store.messages(s.id)) == ["one"]
