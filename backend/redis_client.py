"""Opening the Redis client: a single server or a Redis Cluster, decided by configuration."""

from __future__ import annotations

from redis.asyncio import Redis
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


def open_redis(url: str, *, cluster: bool) -> Redis:
    if cluster:
        # RedisCluster offers the same command API; keys are hash-tagged per session so scripts stay on one slot.
        # Its cap is per node, 100 by default: the same limit as the single server's, on each master.
        client: Redis = RedisCluster.from_url(  # type: ignore[assignment]
            url,
            max_connections=MAX_CONNECTIONS,
            socket_timeout=SOCKET_TIMEOUT_SECONDS,
            socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_SECONDS,
        )
        return client
    return Redis.from_url(
        url,
        health_check_interval=30,
        max_connections=MAX_CONNECTIONS,
        socket_timeout=SOCKET_TIMEOUT_SECONDS,
        socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_SECONDS,
    )
