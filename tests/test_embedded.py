"""The embedded PostgreSQL and Redis: real servers, data that survives a restart and a killed process."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

import asyncpg
import psutil
import pytest
from redis.asyncio import Redis

from backend.embedded import EmbeddedServiceError, EmbeddedUrls, embedded_services

pytestmark = pytest.mark.slow


async def _write(urls: EmbeddedUrls, value: str) -> None:
    assert urls.database_url is not None and urls.redis_url is not None
    conn = await asyncpg.connect(urls.database_url)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS notes (body text NOT NULL)")
        await conn.execute("INSERT INTO notes (body) VALUES ($1)", value)
    finally:
        await conn.close()
    redis = Redis.from_url(urls.redis_url)
    try:
        await redis.set("note", value)
    finally:
        await redis.aclose()


async def _read(urls: EmbeddedUrls) -> tuple[list[str], bytes | str | None]:
    assert urls.database_url is not None and urls.redis_url is not None
    conn = await asyncpg.connect(urls.database_url)
    try:
        rows = [row["body"] for row in await conn.fetch("SELECT body FROM notes")]
    finally:
        await conn.close()
    redis = Redis.from_url(urls.redis_url)
    try:
        return rows, await redis.get("note")
    finally:
        await redis.aclose()


def _assert_stopped(data_dir: Path) -> None:
    # Both servers delete their pid file on a clean shutdown.
    assert not (data_dir / "postgres" / "postmaster.pid").exists()
    assert not (data_dir / "redis" / "redis.pid").exists()


async def test_data_survives_a_restart(tmp_path: Path) -> None:
    async with embedded_services(tmp_path, postgres=True, redis=True) as urls:
        assert urls.database_url is not None and urls.database_url.endswith("/copilot")
        await _write(urls, "first")
    _assert_stopped(tmp_path)

    async with embedded_services(tmp_path, postgres=True, redis=True) as urls:
        assert await _read(urls) == (["first"], b"first")
    _assert_stopped(tmp_path)


async def test_only_the_asked_for_servers_start(tmp_path: Path) -> None:
    async with embedded_services(tmp_path, postgres=False, redis=True) as urls:
        assert urls.database_url is None
        assert urls.redis_url is not None
    assert not (tmp_path / "postgres").exists()


async def test_a_second_process_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    async with embedded_services(tmp_path, postgres=False, redis=True):
        with pytest.raises(EmbeddedServiceError, match="in use by another copilot process"):
            async with embedded_services(tmp_path, postgres=False, redis=True):
                pass


_KILLED_RUN = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from backend.embedded import embedded_services
    from tests.test_embedded import _write

    async def main() -> None:
        async with embedded_services(Path(sys.argv[1]), postgres=True, redis=True) as urls:
            await _write(urls, "before the kill")
            print("ready", flush=True)
            await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_a_killed_run_leaves_nothing_that_blocks_the_next_start(tmp_path: Path) -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLED_RUN, str(tmp_path), stdout=asyncio.subprocess.PIPE, cwd=Path(__file__).parents[1]
    )
    assert child.stdout is not None
    async with asyncio.timeout(30):
        assert await child.stdout.readline() == b"ready\n"
    os.kill(child.pid, signal.SIGKILL)
    await child.wait()
    leftovers = [
        int((tmp_path / "postgres" / "postmaster.pid").read_text().split()[0]),
        int((tmp_path / "redis" / "redis.pid").read_text()),
    ]
    assert all(psutil.pid_exists(pid) for pid in leftovers)  # the servers outlived their parent

    async with embedded_services(tmp_path, postgres=True, redis=True) as urls:
        assert not any(psutil.pid_exists(pid) for pid in leftovers)
        assert await _read(urls) == (["before the kill"], b"before the kill")
    _assert_stopped(tmp_path)


async def test_the_service_runs_on_embedded_defaults_and_keeps_its_data(tmp_path: Path) -> None:
    """`copilot serve` with nothing configured: embedded PostgreSQL and Redis, the demo model, data kept."""
    import httpx

    from backend.config import Settings
    from tests.conftest import LiveServer
    from tests.sse import text_of

    bare = Settings(data_dir=tmp_path, dev_auth=True, _env_file=None)  # type: ignore[call-arg]
    assert bare.database_url is None and bare.redis_url is None and bare.llm_base_url is None
    async with LiveServer(bare) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = (await client.post("/api/chat/sessions", json={"title": "kept"})).json()["id"]
        async with client.stream("POST", f"/api/chat/sessions/{sid}/stream", json={"message": "hello"}) as r:
            body = await r.aread()
        assert "demo model" in text_of(body)  # streamed word by word, at a reading pace
        for _ in range(100):  # the turn stores its reply just after the stream ends
            messages = (await client.get(f"/api/chat/sessions/{sid}")).json()["messages"]
            if len(messages) == 2:
                break
            await asyncio.sleep(0.05)
    async with LiveServer(bare) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        detail = (await client.get(f"/api/chat/sessions/{sid}")).json()
        assert detail["title"] == "kept"
        assert [m["role"] for m in detail["messages"]] == ["user", "assistant"]
