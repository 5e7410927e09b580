"""Opening the Redis client: a single server or a Redis Cluster, decided by configuration."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

MAX_CONNECTIONS = 2**31 - 1
"""Every open stream holds a connection in a blocking XREAD, so the pool must not cap connections: redis-py 8
lowered the default cap to 100, which failed turns at 100 concurrent streams (MaxConnectionsError)."""


def open_redis(url: str, *, cluster: bool) -> Redis:
    if cluster:
        # RedisCluster offers the same command API; keys are hash-tagged per session so scripts stay on one slot.
        client: Redis = RedisCluster.from_url(url)  # type: ignore[assignment]
        return client
    return Redis.from_url(url, health_check_interval=30, max_connections=MAX_CONNECTIONS)
