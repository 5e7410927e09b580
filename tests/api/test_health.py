import asyncpg
import httpx
from redis.asyncio import Redis

from backend.config import Settings
from tests.conftest import LiveServer
from tests.helpers import free_port


async def test_live_and_ready(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    r = await client.get("/health/ready")
    assert r.status_code == 200
    assert r.json()["checks"] == {"postgres": "ok", "redis": "ok"}


async def test_probes_never_write(client: httpx.AsyncClient, db: asyncpg.Connection, redis: Redis) -> None:
    stats = "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables"
    await db.execute("SELECT pg_stat_clear_snapshot()")
    before_pg, before_redis = await db.fetchval(stats), await redis.dbsize()
    for _ in range(5):
        await client.get("/health/ready")
        await client.get("/health/live")
    await db.execute("SELECT pg_stat_force_next_flush()")
    await db.execute("SELECT pg_stat_clear_snapshot()")
    assert await db.fetchval(stats) == before_pg
    assert await redis.dbsize() == before_redis


async def test_ready_is_503_when_redis_is_down(settings: Settings) -> None:
    broken = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async with LiveServer(broken) as live, httpx.AsyncClient(base_url=live.url) as client:
        assert (await client.get("/health/live")).status_code == 200
        r = await client.get("/health/ready")
        assert r.status_code == 503
        assert r.json()["checks"]["postgres"] == "ok"
        assert r.json()["checks"]["redis"].startswith("error")
