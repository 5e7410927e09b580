"""A redis-server of one test alone, on its own port, that the test may stop and start again.

Never the shared server: tests that take Redis away (a restart, an outage) run one of these. No persistence
(`--save '' --appendonly no`): a restart comes back empty, as a Redis without persistence does.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.conftest import free_port


class PrivateRedis:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = directory
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not installed"
        self._process = await asyncio.create_subprocess_exec(
            binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self._directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(self._directory / "redis.log"),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    try:
                        await client.ping()
                        return
                    except RedisConnectionError:
                        await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()

    async def restart(self, down_seconds: float = 0.5) -> None:
        await self.stop()
        await asyncio.sleep(down_seconds)
        await self.start()


@asynccontextmanager
async def private_redis(directory: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(directory)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
