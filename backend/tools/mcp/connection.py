"""One MCP server as this pod sees it: a session kept open by a supervisor task, reopened with backoff when lost.

The supervisor owns the SDK client (its task groups must be entered and left in one task); tool calls from turns
only send requests over it. It connects, lists the tools and hands them to `on_tools`, then watches the session:
a `notifications/tools/list_changed` (or, on 2026-07-28 connections, an event of the `subscriptions/listen`
stream it keeps open) or the TTL makes it list the tools again; a ping that fails, a listen stream that drops or a
call that finds the connection closed makes it reconnect, waiting 0.5 s, then 1 s, 2 s, ... up to
`reconnect_max_seconds` between attempts while the server stays down.

A call to a server that is not connected fails at once with `ServerUnavailable` (a clear tool error for the
model; the turn goes on), except while an attempt to connect is under way: then it waits for that attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx2
from mcp import Client, StdioServerParameters
from mcp import types as mcp_types
from mcp.client.streamable_http import streamable_http_client
from mcp.client.subscriptions import ListenNotSupportedError
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError

from backend.mcp_config import McpServer, StdioServer

log = logging.getLogger("copilot.tools.mcp")

ServerState = Literal["connecting", "ready", "down"]

_FIRST_RETRY_SECONDS = 0.5
_PING_SECONDS = 20.0
_ERROR_CHARS = 300


class ServerUnavailable(Exception):
    """The server cannot take calls now: not connected, or the connection broke during the call."""


class _Lost(Exception):
    """The open session stopped working; the supervisor reconnects."""

    kind = "connection lost"


@dataclass(frozen=True)
class ServerStatus:
    """What `/health/ready` and `/api/info` say about one server."""

    name: str
    transport: Literal["stdio", "http"]
    state: ServerState
    tools: int
    """Tools of the server in the registry (the last list it sent, kept while it is down)."""
    error: str | None
    """Why the last attempt or the last session failed, as a kind (`HTTP 401`, `timed out`, `ConnectError`,
    `connection lost`, ...) safe to show any user; the details are logged. None once connected."""
    since: datetime
    """When the server entered `state`."""


class McpConnection:
    def __init__(
        self,
        name: str,
        spec: McpServer,
        *,
        on_tools: Callable[[str, Sequence[mcp_types.Tool]], None],
        connect_timeout_seconds: float,
        tools_ttl_seconds: float,
        reconnect_max_seconds: float,
        request_guard: Callable[[httpx2.Request], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self._request_guard = request_guard
        """Runs before every HTTP request (redirects included) and may refuse it by raising: the URL policy of
        sessions' own servers."""
        self.spec = spec
        self._on_tools = on_tools
        self._connect_timeout = connect_timeout_seconds
        self._ttl = tools_ttl_seconds
        self._reconnect_max = reconnect_max_seconds
        self._client: Client | None = None
        self._state: ServerState = "connecting"
        self._outcome: ServerState | None = None
        """How the last attempt ended (`ready` or `down`)."""
        self._since = datetime.now(UTC)
        self._error: str | None = None
        self._tool_count = 0
        self._settled = asyncio.Event()
        """Set whenever the state is not `connecting`."""
        self._changed = asyncio.Event()
        self._lost: _Lost | None = None
        self._wake = asyncio.Event()
        self._http_error: str | None = None
        """The last HTTP error status the server answered (the SDK reports only a generic error for it)."""
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._supervise(), name=f"mcp server {self.name}")

    async def close(self) -> None:
        """Stop the supervisor and close the session (a stdio server is stopped)."""
        self._closing = True
        self._wake.set()
        task = self._task
        # The SDK's task groups can swallow a cancellation that lands while they open a connection (seen in about 1
        # close in 30 while a server was down): the flag ends the loop, and the cancellation is repeated until then.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)

    async def wait_settled(self) -> None:
        """Until the current attempt to connect has succeeded or failed."""
        await self._settled.wait()

    def status(self) -> ServerStatus:
        return ServerStatus(
            name=self.name,
            transport=self.spec.type,
            state=self._state,
            tools=self._tool_count,
            error=self._error,
            since=self._since,
        )

    def set_tool_count(self, count: int) -> None:
        self._tool_count = count

    async def call(self, tool: str, arguments: dict[str, Any]) -> mcp_types.CallToolResult:
        """Call `tool` with `arguments`. Raises `ServerUnavailable`, or `MCPError` for an error the server answered.
        The caller bounds the time (`run_tool`'s timeout); cancelling abandons the request."""
        client = await self._connected_client()
        try:
            return await client.call_tool(tool, arguments)
        except MCPError as exc:
            if exc.error.code != mcp_types.CONNECTION_CLOSED:
                raise
            self._lose(client, f"the connection closed during a call: {exc}")
        except (asyncio.CancelledError, TimeoutError):
            raise
        except Exception as exc:  # a transport failure (the SDK raises the HTTP client's errors as they are)
            self._lose(client, f"a call failed: {_describe(exc)[1]}")
        raise ServerUnavailable(f"MCP server {self.name!r} became unavailable during the call; it is reconnected")

    async def _connected_client(self) -> Client:
        if self._state == "connecting":
            await self._settled.wait()
        if self._state == "ready" and self._client is not None:
            return self._client
        reason = f" ({self._error})" if self._error else ""
        raise ServerUnavailable(f"MCP server {self.name!r} is unavailable{reason}; it is retried in the background")

    def _lose(self, client: Client, reason: str) -> None:
        if client is self._client and self._lost is None:
            self._lost = _Lost(reason)
            self._wake.set()

    def _enter(self, state: ServerState, error: str | None = None, detail: str | None = None) -> None:
        # The attempts to reach a server that is down neither move `since` nor log above debug: "down since 10:02"
        # and one warning, not two lines per attempt.
        retrying = self._outcome == "down" and {self._state, state} == {"down", "connecting"}
        if state != self._state and not retrying:
            self._since = datetime.now(UTC)
        if state == "connecting":
            self._settled.clear()
        else:
            if state != self._outcome:
                level = logging.WARNING if state == "down" else logging.INFO
                log.log(level, "MCP server %r is %s%s", self.name, state, f": {detail}" if detail else "")
            else:
                log.debug("MCP server %r is still %s: %s", self.name, state, detail)
            self._outcome = state
            self._settled.set()
        self._state, self._error = state, error

    async def _supervise(self) -> None:
        delay = _FIRST_RETRY_SECONDS
        while not self._closing:
            self._enter("connecting", self._error)
            try:
                await self._run_session()
            except Exception as exc:  # an ExceptionGroup from the SDK's task groups included
                kind, detail = _describe(exc)
                if self._state == "ready":
                    delay = _FIRST_RETRY_SECONDS  # a session that worked: try again soon
                elif self._http_error:
                    kind = self._http_error  # refused while connecting: the status says why
                self._enter("down", kind, detail)
            finally:
                self._client = None
            if self._closing:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            delay = min(delay * 2, self._reconnect_max)

    async def _run_session(self) -> None:
        self._lost = self._http_error = None
        async with AsyncExitStack() as stack:
            async with asyncio.timeout(self._connect_timeout):
                client = await stack.enter_async_context(self._open())
                await self._refresh(client)
            self._client = client
            stack.push_async_callback(_stop, asyncio.create_task(self._listen(client)))
            self._enter("ready")
            listed = time.monotonic()
            pinged = listed
            while not self._closing:
                if self._lost is None and not self._changed.is_set():
                    wait = min(listed + self._ttl, pinged + _PING_SECONDS) - time.monotonic()
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), max(wait, 0))
                if self._lost is not None:
                    raise self._lost
                now = time.monotonic()
                if self._changed.is_set() or now >= listed + self._ttl:
                    self._changed.clear()
                    async with asyncio.timeout(self._connect_timeout):
                        await self._refresh(client)
                    listed = pinged = time.monotonic()
                elif now >= pinged + _PING_SECONDS:
                    async with asyncio.timeout(self._connect_timeout):
                        await client.send_ping()
                    pinged = time.monotonic()

    def _open(self) -> Client:
        spec = self.spec
        if isinstance(spec, StdioServer):
            params = StdioServerParameters(command=spec.command, args=spec.args, env=spec.env, cwd=spec.cwd)
            server: Any = params
        else:
            http = create_mcp_http_client(headers=spec.request_headers())
            http.event_hooks["response"].append(self._note_response)
            if self._request_guard is not None:
                http.event_hooks["request"].append(self._request_guard)
            server = streamable_http_client(str(spec.url), http_client=http)
        return Client(server, message_handler=self._on_message)

    async def _note_response(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self._http_error = f"HTTP {response.status_code}"

    async def _on_message(self, message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            self._changed.set()
            self._wake.set()

    async def _listen(self, client: Client) -> None:
        """On 2026-07-28 connections, change notifications only come to a `subscriptions/listen` stream."""
        try:
            async with client.listen(tools_list_changed=True) as subscription:
                async for _ in subscription:
                    self._changed.set()
                    self._wake.set()
        except ListenNotSupportedError:
            return  # an earlier protocol: notifications come unasked, through `_on_message`
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._lose(client, f"change notifications stopped: {_describe(exc)[1]}")
            return
        self._lose(client, "the server closed its change notifications")

    async def _refresh(self, client: Client) -> None:
        tools: list[mcp_types.Tool] = []
        cursor: str | None = None
        for _ in range(100):  # a server that pages forever cannot hang the supervisor
            page = await client.list_tools(cursor=cursor, cache_mode="refresh")
            tools += page.tools
            cursor = page.next_cursor
            if cursor is None:
                break
        self._on_tools(self.name, tools)


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _describe(exc: BaseException) -> tuple[str, str]:
    """A failure as (kind, detail): the kind names what happened without any text of the server's (which may hold
    URLs or hosts), for every user's eyes; the detail is for the logs."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    if isinstance(exc, _Lost):
        kind = exc.kind
    elif isinstance(exc, TimeoutError):
        kind = "timed out"
    else:
        kind = type(exc).__name__
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else kind
    return kind, detail if len(detail) <= _ERROR_CHARS else detail[: _ERROR_CHARS - 1] + "…"
