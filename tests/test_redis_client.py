from backend.redis_client import open_redis


async def test_the_pool_does_not_cap_connections_at_the_redis_py_default() -> None:
    # Each follower of a turn holds a connection in a blocking XREAD: 100 open streams need 100 connections.
    client = open_redis("redis://127.0.0.1:6379/9", cluster=False)
    try:
        assert client.connection_pool.max_connections > 100_000
    finally:
        await client.aclose()
