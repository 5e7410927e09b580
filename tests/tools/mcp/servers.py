"""MCP servers for the tests, written with the `mcp` SDK: the same tools over stdio (`python -m
tests.tools.mcp.servers`) and over streamable HTTP (`HttpMcpServer`, uvicorn in the test's event loop).

Tools: `add` (arguments), `fail` (an error the tool reports), `slow` (a call that takes `seconds`), `grow` (adds the
tool `later` and announces the list change), `weird.name` (a name providers refuse), `big` (a long output), `pid`
(the server process).
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.helpers import InProcessServer, free_port


def build_server() -> MCPServer:
    server = MCPServer("test-tools", log_level="WARNING")

    @server.tool()
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @server.tool()
    def fail(message: str) -> str:
        """Always fails with `message`."""
        raise ToolError(message)

    @server.tool()
    async def slow(seconds: float) -> str:
        """Answer after `seconds`."""
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool()
    async def grow(ctx: Context) -> str:
        """Add the tool `later` and tell the clients the tool list changed."""

        def later(word: str) -> str:
            return word.upper()

        server.add_tool(later, name="later", description="Shout a word.")
        await ctx.notify_tools_changed()
        return "grown"

    def weird(x: int = 1) -> int:
        return x

    server.add_tool(weird, name="weird.name", description="A tool whose name providers refuse.")

    @server.tool()
    def big(size: int) -> str:
        """`size` characters of text."""
        return "x" * size

    @server.tool()
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    return server


class _RequireBearer:
    """Refuses requests without `Authorization: Bearer <token>` (401), as a real deployment's proxy would."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app, self._expected = app, f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != self._expected:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"unauthorized"})
            return
        await self._app(scope, receive, send)


class HttpMcpServer:
    """The test tools over streamable HTTP at `url`, behind a bearer token; `stop()` and `start()` again on the
    same port simulate an outage."""

    def __init__(self, token: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/mcp"
        self._token = token
        self.mcp = build_server()
        """The running server: a test may change its tools (without announcing it, unlike `grow`)."""
        self._server: InProcessServer | None = None

    async def start(self) -> None:
        self.mcp = build_server()
        app: Any = _RequireBearer(self.mcp.streamable_http_app(), self._token)
        # Open SSE streams would hold a graceful exit.
        self._server = InProcessServer(app, self.port, force_exit=True)
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop()
        self._server = None

    async def __aenter__(self) -> HttpMcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def stdio_config(**extra: Any) -> dict[str, Any]:
    """The `mcpServers` entry that starts these tools over stdio."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return {"command": sys.executable, "args": ["-m", "tests.tools.mcp.servers"], "cwd": root, **extra}


if __name__ == "__main__":
    build_server().run()
