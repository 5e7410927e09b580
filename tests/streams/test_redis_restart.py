"""Streams end when their turn ends, even when Redis restarts without its data in the middle of the turn.

The test runs a redis-server of its own (own port, no persistence) so that it can restart it; the shared one is
never touched.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import orjson

from backend.config import Settings
from tests.conftest import LiveServer
from tests.redis_server import private_redis
from tests.sse import Frame
from tests.streams.test_durable_turns import ALICE, assert_well_formed, frames_of, kinds, new_session, stored


@dataclass
class TimedReader:
    """Reads an SSE response in the background, noting when each frame arrived."""

    frames: list[Frame] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)
    task_id: str | None = None
    ended_at: float | None = None
    task: asyncio.Task[None] | None = None

    def at(self, kind: str) -> float:
        return self.arrived[kinds(self.frames).index(kind)]

    async def wait_for_deltas(self, count: int) -> None:
        assert self.task is not None
        async with asyncio.timeout(10):
            while kinds(self.frames).count("text-delta") < count:
                if self.task.done():
                    self.task.result()
                    raise AssertionError(f"the stream ended early: {kinds(self.frames)}")
                await asyncio.sleep(0.01)

    async def done(self, within: float) -> None:
        assert self.task is not None
        try:
            async with asyncio.timeout(within):
                await self.task
        except TimeoutError:
            raise AssertionError(f"the stream did not end within {within}s: {kinds(self.frames)}") from None


def read_timed(client: httpx.AsyncClient, method: str, url: str, **kwargs: object) -> TimedReader:
    reader = TimedReader()

    async def run() -> None:
        async with client.stream(method, url, **kwargs) as response:  # type: ignore[arg-type]
            reader.task_id = response.headers.get("x-copilot-task-id")
            async for frame in frames_of(response):
                reader.frames.append(frame)
                reader.arrived.append(time.monotonic())
        reader.ended_at = time.monotonic()

    reader.task = asyncio.create_task(run())
    return reader


def text_of(frames: list[Frame]) -> str:
    chunks = [orjson.loads(f.data) for f in frames if f.data != "[DONE]"]
    return "".join(c["delta"] for c in chunks if c["type"] == "text-delta")


async def test_followers_end_on_time_when_redis_restarts_empty_mid_turn(
    chat_settings: Settings, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Regression: after a Redis restart without persistence mid-turn, the owner's pod could not write the turn's
    end (its status record was gone) and sent its own followers to Redis for it: they had `finish` at once but
    `[DONE]` and the end of the response only a heartbeat interval (15 s) later. Followers on other pods waited as
    long and then ended without any `finish`."""
    async with private_redis(tmp_path) as redis_server:
        settings = chat_settings.model_copy(update={"redis_url": redis_server.url})
        assert settings.heartbeat_seconds == 15.0  # the default: what a follower would have waited for
        async with (
            LiveServer(settings) as pod_a,
            LiveServer(settings) as pod_b,
            httpx.AsyncClient(base_url=pod_a.url, timeout=30) as client_a,
            httpx.AsyncClient(base_url=pod_b.url, timeout=30) as client_b,
        ):
            sid = await new_session(client_a)
            message = "[[mock:text tokens=80 delay_ms=25]]"
            owner = read_timed(
                client_a, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}, headers=ALICE
            )
            await owner.wait_for_deltas(5)
            assert owner.task_id is not None
            elsewhere = read_timed(client_b, "GET", f"/api/chat/tasks/{owner.task_id}/stream", headers=ALICE)
            await elsewhere.wait_for_deltas(3)

            await redis_server.restart()
            restarted_at = time.monotonic()
            await elsewhere.done(within=10)
            await owner.done(within=20)

    # On the owner's pod the reply streams on from memory, whole, and its response ends right after `finish`.
    assert kinds(owner.frames)[-2:] == ["finish", "[DONE]"]
    assert_well_formed(owner.frames)
    assert len(text_of(owner.frames).split()) == 80
    assert owner.ended_at is not None and owner.ended_at - owner.at("finish") < 1.0

    # On the other pod the follower notices that the stream is gone and ends the message cleanly, soon.
    assert elsewhere.ended_at is not None and elsewhere.ended_at - restarted_at < 3.0
    assert_well_formed(elsewhere.frames)  # its open text part and step are closed too
    made_up = [f for f in elsewhere.frames if f.id is None]  # not in the stream: no cursor a client could resume at
    assert kinds(made_up) == ["text-end", "finish-step", "data-error", "error", "finish", "[DONE]"]
    assert elsewhere.frames[-len(made_up) :] == made_up

    # The reply itself is not lost: the owner stored all of it.
    assert (await stored(db, sid))[-1] == ("assistant", text_of(owner.frames))
