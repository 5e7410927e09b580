"""The process's open resources (pools, clients, stores), created once in the lifespan and closed at shutdown.

Nothing here is global: the app factory builds a `Runtime` from its `Settings` and hangs it on `app.state`, so a
test can run several apps with their own settings in one process.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import asyncpg
from redis.asyncio import Redis

from backend.auth import Authenticator
from backend.config import Settings
from backend.redis_client import open_redis
from backend.store.cache import SessionCache
from backend.store.migrate import upgrade_dsn
from backend.store.postgres import ChatRepository, create_pool
from backend.store.sessions import SessionStore

log = logging.getLogger("copilot.runtime")


@dataclass
class Runtime:
    settings: Settings
    pool: asyncpg.Pool
    redis: Redis
    sessions: SessionStore
    auth: Authenticator


@asynccontextmanager
async def open_runtime(settings: Settings) -> AsyncIterator[Runtime]:
    async with AsyncExitStack() as stack:
        database_url, redis_url = settings.database_url, settings.redis_url
        if database_url is None or redis_url is None:
            from backend.embedded import embedded_services  # the embedded servers are only loaded when used

            urls = await stack.enter_async_context(
                embedded_services(settings.data_dir, postgres=database_url is None, redis=redis_url is None)
            )
            database_url = database_url or urls.database_url
            redis_url = redis_url or urls.redis_url
        assert database_url is not None and redis_url is not None

        if settings.migrate_on_startup:
            await upgrade_dsn(database_url)
        pool = await create_pool(database_url, min_size=settings.db_pool_min_size, max_size=settings.db_pool_max_size)
        stack.push_async_callback(pool.close)
        redis = open_redis(redis_url, cluster=settings.redis_cluster)
        stack.push_async_callback(redis.aclose)

        sessions = SessionStore(
            ChatRepository(pool), SessionCache(redis, ttl_seconds=settings.session_cache_ttl_seconds)
        )
        stack.push_async_callback(sessions.close)
        yield Runtime(settings=settings, pool=pool, redis=redis, sessions=sessions, auth=Authenticator(settings))
