"""The load driver: sessions with one streaming turn each, and clients that follow their turn to its end.

A client does what a browser tab does. It sends its message to one pod and reads the reply's stream. When the
connection breaks (its pod died, a proxy cut it) or the response ends before the message's `finish`, it reconnects
by task id with `Last-Event-ID`, each time to the next pod (a load balancer routes a new connection away from a dead
pod), with a short pause, until the stream ends, says the turn is gone (404/410), or the deadline passes. A message
that could not be sent (connection refused, 503 of a draining pod) is sent again to the next pod with the same
`client_message_id`, which joins the turn if it had started. What each client saw is kept for the accounting.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from tests.sse import Frame, parse

RETRY_PAUSE_SECONDS = 0.25
_SETTLED: frozenset[str | None] = frozenset({"tool-output-available", "tool-output-error", "tool-input-error"})
"""The chunks after which the AI SDK client shows a tool call as done or failed."""


@dataclass(frozen=True)
class TurnPlan:
    """One turn to run: who sends what to which pod, and the reply the mock model was asked for."""

    user: str
    session_id: str
    pod: int
    message: str
    expected: str
    """The whole reply text the model streams when nothing goes wrong ("" if it streams none)."""
    client_message_id: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass
class ClientView:
    """What one client saw of one turn, kept as it arrives (text, ids, ends) rather than frame by frame, so a soak
    of thousands of turns stays small."""

    plan: TurnPlan
    sent_at: float = 0.0
    task_id: str | None = None
    refused: str | None = None
    """The status and error code of a message that was answered with an error (e.g. `409 conflict`)."""
    frames: int = 0
    deltas: int = 0
    repeated_frames: int = 0
    """Frames whose id was not after the last one received (a reconnect that replayed what the client had)."""
    reconnects: int = 0
    finish_reasons: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """`errorText` of the stream's `error` chunks."""
    done: bool = False
    """`[DONE]` arrived."""
    gone: bool = False
    """A reconnect was answered 404 or 410: the turn's stream no longer exists."""
    first_text_at: float | None = None
    closed_at: float | None = None
    """When the client stopped following (None: still open at the deadline)."""
    last_id: str | None = None
    """The id of the last frame received: the `Last-Event-ID` of a reconnect."""
    _text: list[str] = field(default_factory=list)
    _tools: dict[str, str] = field(default_factory=dict)
    """Each tool call's last chunk type."""

    @property
    def text(self) -> str:
        return "".join(self._text)

    @property
    def finished(self) -> bool:
        """The message ended for the client: a `finish` chunk, or the stream said the turn is gone."""
        return bool(self.finish_reasons) or self.gone or self.refused is not None

    def open_tool_calls(self) -> list[str]:
        """Tool calls the client would still show as running: started, but neither settled nor failed."""
        return [call for call, last in self._tools.items() if last not in _SETTLED]

    def take(self, frame: Frame) -> None:
        if frame.data == "[DONE]":
            self.done = True
            return
        if frame.id is not None:
            # Entry ids only grow within a turn's stream: one that does not is a frame the client already had.
            if self.last_id is not None and _entry_id(frame.id) <= _entry_id(self.last_id):
                self.repeated_frames += 1
            else:
                self.last_id = frame.id
        self.frames += 1
        chunk: dict[str, Any] = orjson.loads(frame.data)
        kind = chunk.get("type")
        call = chunk.get("toolCallId")
        if kind == "text-delta":
            self.deltas += 1
            self._text.append(str(chunk["delta"]))
            self.first_text_at = self.first_text_at or time.monotonic()
        elif kind == "finish":
            self.finish_reasons.append(str(chunk.get("finishReason")))
        elif kind == "error":
            self.errors.append(str(chunk.get("errorText")))
        elif isinstance(call, str) and str(kind).startswith("tool-") and self._tools.get(call) not in _SETTLED:
            self._tools[call] = str(kind)


def _entry_id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Driver:
    """Runs clients against the pods whose URLs `urls()` returns now (a restarted pod has a new port)."""

    def __init__(self, urls: Callable[[], Sequence[str]], token: Callable[[str], str]) -> None:
        self._urls = urls
        self._token = token
        # The read timeout sits above the service's 15 s heartbeat: a stream that is only quiet is not cut.
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(20.0, connect=2.0), limits=httpx.Limits(max_connections=None)
        )

    async def __aenter__(self) -> Driver:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    def headers(self, user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token(user)}"}

    def url(self, pod: int, path: str) -> str:
        urls = self._urls()
        return urls[pod % len(urls)] + path

    async def request(self, method: str, pod: int, path: str, user: str, **kwargs: Any) -> httpx.Response:
        """A plain request, tried on the next pod when the connection fails (a pooled keep-alive connection the
        server just closed, a pod that is down), three times at most."""
        for attempt in range(2):
            try:
                return await self.http.request(
                    method, self.url(pod + attempt, path), headers=self.headers(user), **kwargs
                )
            except httpx.TransportError:
                await asyncio.sleep(RETRY_PAUSE_SECONDS)
        return await self.http.request(method, self.url(pod + 2, path), headers=self.headers(user), **kwargs)

    async def new_session(self, user: str, pod: int) -> str:
        # A title keeps the title writer (which also calls the model) out of the way.
        r = await self.request("POST", pod, "/api/chat/sessions", user, json={"title": "chaos"})
        r.raise_for_status()
        return str(r.json()["id"])

    async def follow(self, view: ClientView, *, within: float, pod: int | None = None) -> None:
        """Send the view's message, or reconnect if it was sent, and follow the reply until it ends (filling in
        `view` as it goes), starting at the plan's pod or `pod`; gives up after `within` seconds."""
        view.sent_at = view.sent_at or time.monotonic()
        deadline = time.monotonic() + within
        pod = view.plan.pod if pod is None else pod
        while True:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await (self._send(pod, view) if view.task_id is None else self._resume(pod, view))
            except (httpx.TransportError, TimeoutError):
                pass  # the connection broke or hung: go on with the next pod
            if view.finished or time.monotonic() >= deadline:
                break
            if view.task_id is not None:
                view.reconnects += 1
            pod += 1
            await asyncio.sleep(RETRY_PAUSE_SECONDS)
        if view.finished:
            view.closed_at = time.monotonic()

    async def _send(self, pod: int, view: ClientView) -> None:
        plan = view.plan
        body = {"message": plan.message, "client_message_id": plan.client_message_id}
        url = self.url(pod, f"/api/chat/sessions/{plan.session_id}/stream")
        async with self.http.stream("POST", url, json=body, headers=self.headers(plan.user)) as response:
            if response.status_code >= 500:
                return  # a pod that cannot take it (draining, its storage down): the next pod gets it
            if response.status_code != 200:
                await response.aread()
                view.refused = f"{response.status_code} {_error_code(response)}"
                return
            view.task_id = response.headers["x-copilot-task-id"]
            await _read(response, view)

    async def _resume(self, pod: int, view: ClientView) -> None:
        headers = self.headers(view.plan.user)
        if view.last_id is not None:
            headers["Last-Event-ID"] = view.last_id
        url = self.url(pod, f"/api/chat/tasks/{view.task_id}/stream")
        async with self.http.stream("GET", url, headers=headers) as response:
            if response.status_code in (404, 410):
                view.gone = True
                return
            if response.status_code != 200:
                return
            await _read(response, view)

    async def active_task(self, plan: TurnPlan) -> str | Exception | None:
        """The session's running task as the API reports it (the exception if no pod could answer)."""
        failure: Exception = RuntimeError("no pod")
        for pod in range(len(self._urls())):
            try:
                r = await self.http.get(
                    self.url(plan.pod + pod, f"/api/chat/sessions/{plan.session_id}"), headers=self.headers(plan.user)
                )
                if r.status_code == 200:
                    active = r.json()["active_task"]
                    return None if active is None else str(active["task_id"])
                failure = RuntimeError(f"{r.status_code} {r.text[:200]}")
            except httpx.TransportError as e:
                failure = e
        return failure


async def _read(response: httpx.Response, view: ClientView) -> None:
    """Take the response's frames as they arrive; returns at its end (`[DONE]` or the connection's)."""
    buffer = b""
    async for data in response.aiter_bytes():
        buffer += data
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for frame in parse(event + b"\n\n"):
                view.take(frame)


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return response.text[:80]
