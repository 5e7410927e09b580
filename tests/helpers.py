"""Helpers the tests share: waiting for a condition, and serving an app on a loopback port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[1]


async def wait_for(condition: Callable[[], Awaitable[bool]], within: float = 15, every: float = 0.02) -> None:
    """Until `condition()` is true; `AssertionError` once `within` seconds passed without it."""
    deadline = time.monotonic() + within
    while True:
        if await condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still not true after {within}s: {condition}")
        await asyncio.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class InProcessServer:
    """An ASGI app served by uvicorn on a loopback port, in the test's event loop. `stop()` and `start()` again
    serve it on the same port (an outage); `force_exit` stops without waiting for open streams to end."""

    def __init__(self, app: Any, port: int | None = None, *, force_exit: bool = False, **config: Any) -> None:
        self.app = app
        self.port = port or free_port()
        self._config = {"log_level": "warning", "lifespan": "on", **config}
        self._force_exit = force_exit
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, **self._config))
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()  # its startup error
                raise AssertionError("the server exited before it started")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            self._server.force_exit = self._force_exit
            await self._task
        self._server = self._task = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def wait_until_ready(
    url: str, log_path: Path, *, exited: Callable[[], int | None] = lambda: None, within: float = 60
) -> None:
    """Until the server at `url` answers `/health/ready` with 200; `AssertionError` with its log if it exits
    (`exited()` returns its code) or is not ready `within` seconds."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=url) as client:
        while time.monotonic() < deadline:
            if (code := exited()) is not None:
                raise AssertionError(f"the server exited with {code}:\n{await asyncio.to_thread(log_path.read_text)}")
            try:
                if (await client.get("/health/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"the server did not start:\n{await asyncio.to_thread(log_path.read_text)}")


@contextmanager
def copilot_serve(env: Mapping[str, str], log_path: Path) -> Iterator[int]:
    """`copilot serve` in a process of its own on a free port, with `env` (plus `PATH`, `HOME` and the checkout on
    `PYTHONPATH`), run from `log_path`'s folder so no stray `.env` is read, its output in `log_path`; interrupted as
    by Ctrl-C at the end (killed if it is not gone after 30 s). Yields the port; see `wait_until_ready`."""
    port = free_port()
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(log_path.parent)),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    with log_path.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend.cli", "serve", "--port", str(port)],
            cwd=log_path.parent,
            env=environment,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield port
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def until(condition: Callable[[], bool]) -> None:
    async def holds() -> bool:
        return condition()

    await wait_for(holds, within=5, every=0.005)
