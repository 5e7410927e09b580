"""A client of the topology that talks to it the way a browser does: through the balancer, with a bearer token,
reading SSE frames as they arrive. Every answer says which pod served it (HAProxy's `X-Served-By`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.cluster.topology import Topology
from tests.sse import Frame, parse


@dataclass
class Stream:
    """One SSE response, read so far."""

    response: httpx.Response
    frames: list[Frame] = field(default_factory=list)
    body: bytes = b""

    @property
    def pod(self) -> str | None:
        return self.response.headers.get("x-served-by")

    @property
    def task_id(self) -> str | None:
        return self.response.headers.get("x-copilot-task-id")

    @property
    def last_id(self) -> str | None:
        return next((f.id for f in reversed(self.frames) if f.id), None)

    _chunks: AsyncIterator[bytes] | None = None
    _buffer: bytes = b""

    async def read(self, *, until: int | None = None) -> None:
        """Read frames until the stream ends, or until `until` frames have arrived (a later call goes on)."""
        if self._chunks is None:
            self._chunks = self.response.aiter_bytes()
        async for data in self._chunks:
            self.body += data
            *blocks, self._buffer = (self._buffer + data).split(b"\n\n")
            for block in blocks:
                self.frames += parse(block + b"\n\n")
            if until is not None and len(self.frames) >= until:
                return


class ClusterClient:
    def __init__(self, topology: Topology, *, user: str) -> None:
        self.topology = topology
        self.user = user
        self.http = httpx.AsyncClient(
            base_url=topology.url,
            headers={"Authorization": f"Bearer {topology.token(user)}"},
            timeout=httpx.Timeout(30.0, connect=3.0),
            limits=httpx.Limits(max_connections=None),
        )

    async def __aenter__(self) -> ClusterClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def new_session(self) -> str:
        r = await self.http.post("/api/chat/sessions", json={"title": "cluster"})
        r.raise_for_status()
        return str(r.json()["id"])

    async def session(self, session_id: str) -> dict[str, Any]:
        r = await self.http.get(f"/api/chat/sessions/{session_id}")
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        return body

    @asynccontextmanager
    async def send(
        self, session_id: str, message: str, *, client_message_id: str | None = None
    ) -> AsyncIterator[Stream]:
        """POST a message; the open reply stream (read it with `Stream.read`)."""
        body = {"message": message, "client_message_id": client_message_id or uuid.uuid4().hex}
        async with self.http.stream("POST", f"/api/chat/sessions/{session_id}/stream", json=body) as response:
            yield Stream(response)

    async def turn(self, session_id: str, message: str) -> Stream:
        """Send a message and read its whole reply."""
        async with self.send(session_id, message) as stream:
            await stream.read()
        return stream

    @asynccontextmanager
    async def resume(self, task_id: str, *, after: str | None = None) -> AsyncIterator[Stream]:
        headers = {"Last-Event-ID": after} if after else {}
        async with self.http.stream("GET", f"/api/chat/tasks/{task_id}/stream", headers=headers) as response:
            yield Stream(response)
