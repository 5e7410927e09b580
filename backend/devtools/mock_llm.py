"""An OpenAI-compatible mock model server for tests, benchmarks and the offline demo.

The reply to ``POST /v1/chat/completions`` is chosen by markers in the last user message,
``[[mock:<scenario> key=value ...]]`` (docs/mock-llm.md lists them). Without a marker the server
answers as the offline demo model. When the last message is a ``tool`` message the model is being
called back with tool results, and it answers with text that quotes them.

``MockLLM`` is the ASGI app together with its state, ``MockLLMServer`` runs one in the current
event loop for tests, and ``run`` serves one from the command line (``copilot mock-llm``).

This module is the public face and does the serving; the rest lives in private siblings:
``_mock_markers`` (marker syntax), ``_mock_scenarios`` (what each marker does), ``_mock_wire``
(OpenAI chunks and errors, and sending them) and ``_mock_app`` (the ``MockLLM`` ASGI app).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import socket
from collections.abc import Generator
from typing import Any, Self

import uvicorn

from backend.devtools._mock_app import MAX_RECORDED_REQUESTS, MODEL_ID, MockLLM
from backend.devtools._mock_markers import Marker, MarkerError, parse_markers
from backend.devtools._mock_scenarios import DEFAULT_TEXT_TOKENS, SCENARIOS, Scenario
from backend.devtools._mock_wire import StreamCut

__all__ = [
    "DEFAULT_TEXT_TOKENS",
    "MAX_RECORDED_REQUESTS",
    "MODEL_ID",
    "SCENARIOS",
    "Marker",
    "MarkerError",
    "MockLLM",
    "MockLLMServer",
    "Scenario",
    "parse_markers",
    "run",
]


class _HideStreamCuts(logging.Filter):
    """Keeps the deliberate ``cut`` scenario out of uvicorn's "Exception in ASGI application" log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], StreamCut))


# True inside an embedded mock server's task: its uvicorn logs on the same `uvicorn.error` logger as the host's
# server, so in `copilot serve` (the demo model) its "Started server process [pid]", "Shutting down" and "Finished
# server process [pid]" read as the app's own lines printed twice.
_IN_EMBEDDED_SERVER: contextvars.ContextVar[bool] = contextvars.ContextVar("in_embedded_mock_server", default=False)


class _HideEmbeddedLifecycle(logging.Filter):
    """Drops an embedded mock server's info lines; its warnings and errors still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not _IN_EMBEDDED_SERVER.get()


def _hide_stream_cuts() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _HideStreamCuts) for f in logger.filters):
        logger.addFilter(_HideStreamCuts())
    if not any(isinstance(f, _HideEmbeddedLifecycle) for f in logger.filters):
        logger.addFilter(_HideEmbeddedLifecycle())


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Ctrl+C belongs to the host process (pytest, a benchmark), not to the embedded server.
        yield


class MockLLMServer:
    """Serves a ``MockLLM`` on a free 127.0.0.1 port in the current event loop.

    Use it as ``async with MockLLMServer() as llm`` and point the SDK at ``llm.base_url``.
    """

    def __init__(
        self, mock: MockLLM | None = None, *, default_tokens: int | None = None, default_delay_ms: float = 0.0
    ) -> None:
        self.mock = (
            mock if mock is not None else MockLLM(default_tokens=default_tokens, default_delay_ms=default_delay_ms)
        )
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, ending in ``/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Bodies of the chat completion requests received, oldest first."""
        return self.mock.requests

    async def __aenter__(self) -> Self:
        _hide_stream_cuts()
        # Binding the socket here lets the kernel pick a free port with no race.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        # No access log: the host's server logs its own requests, the model's calls would read as more of them.
        config = uvicorn.Config(
            self.mock, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1
        )
        server = self._server = _EmbeddedServer(config)

        async def serve() -> None:
            _IN_EMBEDDED_SERVER.set(True)  # in this task's own context only
            await server.serve(sockets=[sock])

        task = self._task = asyncio.create_task(serve())
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                    raise RuntimeError("the mock LLM server stopped while starting")
                await asyncio.sleep(0.01)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            await self._task


def run(
    host: str = "127.0.0.1",
    port: int = 8001,
    *,
    default_tokens: int | None = None,
    default_delay_ms: float = 0.0,
    log_level: str = "info",
) -> None:
    """Serve the mock model until interrupted (``copilot mock-llm``); see ``MockLLM`` for the defaults."""
    mock = MockLLM(default_tokens=default_tokens, default_delay_ms=default_delay_ms)
    config = uvicorn.Config(mock, host=host, port=port, log_level=log_level, access_log=False, lifespan="off")
    _hide_stream_cuts()  # after Config, which applies uvicorn's logging config
    uvicorn.Server(config).run()
