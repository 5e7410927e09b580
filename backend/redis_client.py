"""Opening the Redis client: a single server or a Redis Cluster, decided by configuration."""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster


def open_redis(url: str, *, cluster: bool) -> Redis:
    if cluster:
        # RedisCluster offers the same command API; keys are hash-tagged per session so scripts stay on one slot.
        client: Redis = RedisCluster.from_url(url)  # type: ignore[assignment]
        return client
    return Redis.from_url(url, health_check_interval=30)
