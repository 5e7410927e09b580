"""`copilot serve`'s HTTP server: uvicorn, with the shutdown an orchestrator expects.

uvicorn's own answer to SIGTERM is to stop listening at once and then wait for every open response to end: a
streaming reply keeps it waiting (30 s and more) until the orchestrator kills the pod, reply and all. Here SIGTERM
starts the app's drain instead (`backend.app.drain`: readiness 503 and new turns refused at once, running turns
given the grace period, then stopped and stored `[interrupted]`, their streams ended) while the server keeps
listening, so probes, follows and reconnects still work. Only then does uvicorn shut down; connections still open
(followers of other pods' turns, WebSockets: their clients reconnect elsewhere by cursor) get
`CONNECTIONS_GRACE_SECONDS` before they are cut. A second SIGTERM, or SIGINT, shuts down the uvicorn way at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

log = logging.getLogger("copilot.server")

CONNECTIONS_GRACE_SECONDS = 3
"""After the drain, how long uvicorn waits for the connections still open before it cancels them."""


class DrainingServer(uvicorn.Server):
    """A uvicorn server that runs `drain()` on the first SIGTERM and exits once it returns."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sigterm_seen = False
        self._draining: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler runs between two bytecodes of whatever the loop is doing: it only schedules the drain.
        if sig == signal.SIGTERM and not self._sigterm_seen and self._loop is not None and not self.should_exit:
            self._sigterm_seen = True
            self._loop.call_soon_threadsafe(self._start_draining)
            return
        super().handle_exit(sig, frame)

    def _start_draining(self) -> None:
        self._draining = asyncio.create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        log.warning("SIGTERM: draining (no new turns; running turns get their grace period), then exiting")
        try:
            await self._drain()
        except Exception:
            log.exception("draining failed; shutting down now")
        finally:
            self.should_exit = True
