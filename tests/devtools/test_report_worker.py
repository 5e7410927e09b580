"""The example report worker (`backend/devtools/report_worker.py`) against a live service, the mock model and real
Redis: it outlives idle periods and a Redis restart, retries a delivery with the same delivery id, and stops
cleanly."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from backend import keys
from backend.config import Settings
from backend.devtools.report_worker import (
    GROUP,
    SOCKET_TIMEOUT_SECONDS,
    WorkerConfig,
    ensure_group,
    process_available,
    run,
    webhook,
    write_report,
)
from tests.api.test_chat_stream import new_session
from tests.chat.test_operations import REPORT, SECRET, settled, start_operation, tool_message
from tests.conftest import REDIS_URL, LiveServer
from tests.helpers import wait_for
from tests.redis_server import private_redis


@pytest.fixture
def worker_settings(chat_settings: Settings) -> Settings:
    return chat_settings.model_copy(
        update={"webhook_secret": SecretStr(SECRET), "completion_reclaim_idle_seconds": 0.5, "heartbeat_seconds": 0.5}
    )


@contextlib.asynccontextmanager
async def worker(redis_url: str, api_url: str) -> AsyncIterator[asyncio.Task[None]]:
    """The worker running in the background; stopped (and checked to stop promptly) when the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(run(redis_url, WorkerConfig(api_url, SECRET, work_seconds=0), stop))
    try:
        yield task
    finally:
        stop.set()
        async with asyncio.timeout(10):  # one read of `block_seconds` and the job in hand at most
            await asyncio.gather(task, return_exceptions=True)
    if not task.cancelled() and task.exception() is not None:
        raise AssertionError("the worker crashed") from task.exception()


async def delegated_report_is_processed(client: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis) -> None:
    sid = await new_session(client)
    started = await start_operation(client, sid, REPORT)
    await wait_for(lambda: settled(db, started["operation_id"]), within=30)
    assert await tool_message(db, sid) == write_report("cats", 3)


async def test_the_worker_outlives_an_idle_queue_then_processes_a_job(
    worker_settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    """Regression: the worker blocked 5 s in XREADGROUP on a client whose socket timeout is 5 s, so ~6 s without a
    job killed it with a TimeoutError."""
    async with (
        LiveServer(worker_settings) as live,
        httpx.AsyncClient(base_url=live.url, timeout=30) as client,
        worker(REDIS_URL, live.url) as task,
    ):
        await asyncio.sleep(15)  # three times the socket timeout of redis-py's default client
        assert not task.done(), task
        await delegated_report_is_processed(client, db, redis)
        assert not task.done()
        pending: Any = await redis.xpending(keys.jobs("report"), GROUP)
        assert pending["pending"] == 0  # acknowledged once the API accepted it
    assert task.done() and not task.cancelled()  # `stop` ended it; it was not cancelled


async def test_the_worker_processes_jobs_after_redis_restarts_under_it(
    worker_settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    async with private_redis(tmp_path) as server:
        settings = worker_settings.model_copy(update={"redis_url": server.url})
        async with (
            LiveServer(settings) as live,
            httpx.AsyncClient(base_url=live.url, timeout=30) as client,
            worker(server.url, live.url) as task,
        ):
            redis = Redis.from_url(server.url)
            try:
                await delegated_report_is_processed(client, db, redis)
                await server.restart(down_seconds=2)  # the worker is blocked in a read, or between two
                await asyncio.sleep(1)
                assert not task.done(), task
                await delegated_report_is_processed(client, db, redis)  # the stream and group came back empty
                assert not task.done()
            finally:
                await redis.aclose()


async def test_a_failed_webhook_is_sent_again_with_the_same_delivery_id(
    worker_settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    """A job stays pending until the API answered; the retry carries the same delivery id, so a delivery that did
    arrive (its answer lost) comes back as a duplicate instead of a second completion."""
    seen: list[tuple[str, int]] = []

    async with LiveServer(worker_settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        started = await start_operation(client, sid, REPORT)
        await wait_for(lambda: _has_job(redis))

        # A proxy in front of the API that forwards the first delivery but loses its answer.
        async def lossy(request: httpx.Request) -> httpx.Response:
            forwarded = await client.post(request.url.path, content=request.content, headers=dict(request.headers))
            seen.append((request.headers["x-copilot-delivery"], forwarded.status_code))
            if len(seen) == 1:
                raise httpx.ReadError("connection reset", request=request)
            return httpx.Response(forwarded.status_code, content=forwarded.content)

        config = WorkerConfig("http://api", SECRET, work_seconds=0, block_seconds=0.2)
        async with httpx.AsyncClient(transport=httpx.MockTransport(lossy)) as http:
            await ensure_group(redis)
            assert await process_available(redis, webhook(http, config), config) == 0  # answer lost: still pending
            assert (await redis.xpending(keys.jobs("report"), GROUP))["pending"] == 1
            assert (
                await process_available(redis, webhook(http, config), config) == 0
            )  # sent again: a duplicate, acknowledged
            assert (await redis.xpending(keys.jobs("report"), GROUP))["pending"] == 0
        assert [status for _, status in seen] == [202, 200]
        assert seen[0][0] == seen[1][0]
        await wait_for(lambda: settled(db, started["operation_id"]))
        assert await redis.xlen(keys.COMPLETIONS) == 1


async def _has_job(redis: Redis) -> bool:
    return int(await redis.xlen(keys.jobs("report"))) >= 1


def test_a_read_may_not_block_as_long_as_the_socket_timeout() -> None:
    with pytest.raises(ValueError, match="block_seconds"):
        WorkerConfig("http://api", SECRET, block_seconds=SOCKET_TIMEOUT_SECONDS)
    assert WorkerConfig("http://api", SECRET).block_seconds < SOCKET_TIMEOUT_SECONDS / 2
