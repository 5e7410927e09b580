"""Opening the Redis client: a single server or a Redis Cluster, decided by configuration, optionally timed.

A timed client reports every command's round trip to an observer (metrics, trace spans): a subclass of the client
whose `execute_command` (every command and script call goes through it) and pipeline `execute` measure the call.
Blocking reads (`XREAD` / `XREADGROUP` with `BLOCK`) are not reported: their time is waiting, not latency.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster

MAX_CONNECTIONS = 2**31 - 1
"""Every open stream holds a connection in a blocking XREAD, so the pool must not cap connections: redis-py 8
lowered the default cap to 100, which failed turns at 100 concurrent streams (MaxConnectionsError). The cluster
client's default is 100 per node."""


SOCKET_TIMEOUT_SECONDS = 3.0
"""Longest wait for one reply. A Redis that stopped answering (frozen, or gone without a reset) fails a command
with `TimeoutError` after this instead of hanging the request; readers then fall back to Postgres. It stays above
the longest blocking read (XREAD / XREADGROUP `BLOCK` of 1 s). Set explicitly: redis-py before 8 had no default."""

SOCKET_CONNECT_TIMEOUT_SECONDS = 2.0
"""Longest wait for a new connection (a host that drops packets)."""


CommandObserver = Callable[[str, float, bool], None]
"""Hears each command (a pipeline as `PIPELINE`): its name, its duration, whether it raised. Cheap, never raising."""


def open_redis(url: str, *, cluster: bool, observe: CommandObserver | None = None) -> Redis:
    if cluster:
        # RedisCluster offers the same command API; keys are hash-tagged per session so scripts stay on one slot.
        # Its cap is per node, 100 by default: the same limit as the single server's, on each master.
        cluster_class = RedisCluster if observe is None else _TimedRedisCluster
        client: Redis = cluster_class.from_url(  # type: ignore[assignment]
            url,
            max_connections=MAX_CONNECTIONS,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_SECONDS,
        )
    else:
        client = (Redis if observe is None else _TimedRedis).from_url(
            url,
            health_check_interval=30,
            max_connections=MAX_CONNECTIONS,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_SECONDS,
        )
    if observe is not None:
        client._observe = observe  # type: ignore[attr-defined]
    return client


def _name(args: tuple[Any, ...], names: dict[Any, str] = {}) -> str:  # noqa: B006 (a cache on purpose)
    command = args[0] if args else "?"
    name = names.get(command)
    if name is None:
        text = command.decode() if isinstance(command, bytes) else str(command)
        name = names[command] = text.upper()
    return name


class _TimedRedis(Redis):
    _observe: CommandObserver

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if b"BLOCK" in args:
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        started = time.perf_counter()
        try:
            result = await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except Exception:
            self._observe(_name(args), time.perf_counter() - started, True)
            raise
        self._observe(_name(args), time.perf_counter() - started, False)
        return result

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = _TimedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe._observe = self._observe
        return pipe


class _TimedPipeline(Pipeline):
    _observe: CommandObserver

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        started = time.perf_counter()
        try:
            result: list[Any] = await super().execute(raise_on_error)
        except Exception:
            self._observe("PIPELINE", time.perf_counter() - started, True)
            raise
        self._observe("PIPELINE", time.perf_counter() - started, False)
        return result


class _TimedRedisCluster(RedisCluster):
    """Single commands only: a cluster pipeline fans out per node and is not timed."""

    _observe: CommandObserver

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        if b"BLOCK" in args:
            return await super().execute_command(*args, **kwargs)
        started = time.perf_counter()
        try:
            result = await super().execute_command(*args, **kwargs)
        except Exception:
            self._observe(_name(args), time.perf_counter() - started, True)
            raise
        self._observe(_name(args), time.perf_counter() - started, False)
        return result
