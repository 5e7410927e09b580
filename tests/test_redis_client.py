import asyncio
import time

import pytest
from redis.exceptions import TimeoutError as RedisTimeoutError

from backend.redis_client import SOCKET_CONNECT_TIMEOUT_SECONDS, SOCKET_TIMEOUT_SECONDS, open_redis


async def test_the_pool_does_not_cap_connections_at_the_redis_py_default() -> None:
    # Each follower of a turn holds a connection in a blocking XREAD: 100 open streams need 100 connections.
    client = open_redis("redis://127.0.0.1:6379/9", cluster=False)
    try:
        assert client.connection_pool.max_connections > 100_000
    finally:
        await client.aclose()


async def test_a_redis_that_stops_answering_fails_a_command_within_the_socket_timeout() -> None:
    # A listener that accepts connections and never answers: what a frozen or wedged Redis looks like. Its writers
    # are held: on Python 3.13 a stream writer that is collected closes its connection, which is an answer of sorts.
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda reader, writer: held.append(writer), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    client = open_redis(f"redis://127.0.0.1:{port}/0", cluster=False)
    try:
        # Set explicitly, not inherited: redis-py before 8 waits forever by default, 8 waits 5 s.
        kwargs = client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (
            SOCKET_TIMEOUT_SECONDS,
            SOCKET_CONNECT_TIMEOUT_SECONDS,
        )
        started = time.monotonic()
        with pytest.raises(RedisTimeoutError):
            await client.get("anything")
        assert time.monotonic() - started < SOCKET_TIMEOUT_SECONDS + 1.5
    finally:
        await client.aclose()
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
