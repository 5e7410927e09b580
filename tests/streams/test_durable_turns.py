"""Durable turns end to end: two server processes share Postgres and Redis; any pod resumes, cancels and closes
a turn another pod runs, even after that pod was killed (DESIGN.md invariants 2-4).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import httpx
import orjson
import pytest
from redis.asyncio import Redis

from backend import keys
from backend.chat import protocol
from backend.config import Settings
from backend.devtools.mock_llm import MockLLMServer
from backend.streams.active import ActiveTurns
from backend.streams.turns import TurnRegistry, is_owners_entry, position_of
from tests.conformance.ai_sdk import assemble
from tests.conftest import DATABASE_URL, JWT_SECRET, REDIS_URL, LiveServer, auth
from tests.helpers import free_port, wait_for, wait_until_ready
from tests.protocol_check import check_body
from tests.sse import Frame, chunks, parse, text_of, types

ROOT = Path(__file__).resolve().parents[2]
ALICE, BOB = auth("alice"), auth("bob")
SLOW = "[[mock:text tokens=120 delay_ms=20]]"
INTERRUPTED = "\n\n[interrupted]"


# --- two pods ---------------------------------------------------------------------------------------------


@dataclass
class Pod:
    """One `uvicorn` process of the service."""

    name: str
    url: str
    process: asyncio.subprocess.Process
    log_path: Path
    client: httpx.AsyncClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.AsyncClient(base_url=self.url, timeout=30)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, the pod's turns are left running in Redis."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)


def pod_env(llm: MockLLMServer) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COPILOT_", "OPENAI_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
    return {
        **env,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "COPILOT_JWT_SECRET": JWT_SECRET,
        "OPENAI_BASE_URL": llm.base_url,
        "OPENAI_API_KEY": "test",
        "COPILOT_MODEL": "mock-model",
        "COPILOT_TURN_LEASE_SECONDS": "2",
        "COPILOT_HEARTBEAT_SECONDS": "0.5",
        "COPILOT_MIGRATE_ON_STARTUP": "true",
        "COPILOT_LOG_LEVEL": "WARNING",
        # These pods run many turns of one user at once; the per-user limits are proven in tests of their own.
        "COPILOT_RATE_LIMIT_CONCURRENT_TURNS": "0",
        "COPILOT_RATE_LIMIT_REQUESTS_PER_MINUTE": "0",
    }


async def start_pod(name: str, env: dict[str, str], log: IO[bytes], log_path: Path) -> Pod:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "uvicorn", "backend.app:create_app", "--factory"),
        *("--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"),
        cwd=log_path.parent,  # not the checkout: no stray .env is read
        env=env,
        stdout=log,
        stderr=log,
    )
    return Pod(name, f"http://127.0.0.1:{port}", process, log_path)


async def wait_ready(pod: Pod) -> None:
    await wait_until_ready(pod.url, pod.log_path, exited=lambda: pod.process.returncode)


@asynccontextmanager
async def two_pods(env: dict[str, str], tmp_path: Path) -> AsyncIterator[tuple[Pod, Pod]]:
    """Two server processes on two ports with `env`; killed afterwards, their logs printed (shown on failure)."""
    logs = [(tmp_path / f"pod-{name}.log") for name in "ab"]
    files = [path.open("wb") for path in logs]
    started: list[Pod] = []
    try:
        for name, log, path in zip("ab", files, logs, strict=True):
            started.append(await start_pod(name, env, log, path))
        await asyncio.gather(*(wait_ready(pod) for pod in started))
        yield started[0], started[1]
    finally:
        for pod in started:
            pod.kill()
            await pod.process.wait()
            await pod.client.aclose()
        for log in files:
            log.close()
        for path in logs:
            print(f"--- {path.name} ---\n{path.read_text()[-5000:]}")  # shown when the test fails


@pytest.fixture
async def pods(
    db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer, tmp_path: Path
) -> AsyncIterator[tuple[Pod, Pod]]:
    """Two server processes on two ports, sharing the tests' Postgres and Redis and the mock model."""
    async with two_pods(pod_env(mock_llm), tmp_path) as started:
        yield started


# --- helpers ----------------------------------------------------------------------------------------------


async def new_session(client: httpx.AsyncClient) -> str:
    # A title keeps the title writer (which also calls the mock) out of the way.
    r = await client.post("/api/chat/sessions", json={"title": "t"}, headers=ALICE)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def frames_of(response: httpx.Response) -> AsyncIterator[Frame]:
    """Data frames as they arrive (heartbeat comments skipped)."""
    buffer = b""
    async for data in response.aiter_bytes():
        buffer += data
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for frame in parse(event + b"\n\n"):
                yield frame
    assert buffer == b"", buffer


def body_of(frames: list[Frame]) -> bytes:
    """The frames back in wire form (for `check_body`, `text_of`, `assemble`)."""
    return b"".join(protocol.frame(f.data.encode(), f.id) for f in frames)


def kinds(frames: list[Frame]) -> list[str]:
    return [orjson.loads(f.data)["type"] if f.data != "[DONE]" else "[DONE]" for f in frames]


@dataclass
class Reader:
    """Reads a turn's SSE in the background; `frames` grows as they arrive."""

    frames: list[Frame] = field(default_factory=list)
    task_id: str | None = None
    status: int | None = None
    ended_at: float | None = None
    error: BaseException | None = None
    _task: asyncio.Task[None] | None = None

    def text(self) -> str:
        return text_of(body_of(self.frames))

    def deltas(self) -> int:
        return kinds(self.frames).count("text-delta")

    async def wait_for_text(self, deltas: int = 5) -> None:
        async with asyncio.timeout(10):
            while self.deltas() < deltas:
                assert self._task is not None
                if self._task.done():
                    self._task.result()
                    raise AssertionError(f"the stream ended early: {kinds(self.frames)}")
                await asyncio.sleep(0.01)

    async def done(self, within: float = 30) -> None:
        assert self._task is not None
        try:
            async with asyncio.timeout(within):
                await self._task
        except TimeoutError:
            raise AssertionError(f"the stream did not end within {within}s: {kinds(self.frames)}") from None


def read(client: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> Reader:
    reader = Reader()

    async def run() -> None:
        try:
            async with client.stream(method, url, **kwargs) as response:
                reader.status = response.status_code
                reader.task_id = response.headers.get("x-copilot-task-id")
                async for frame in frames_of(response):
                    reader.frames.append(frame)
        except httpx.TransportError as e:
            reader.error = e
        reader.ended_at = time.monotonic()

    reader._task = asyncio.create_task(run())
    return reader


def send(pod: Pod, sid: str, message: str) -> Reader:
    return read(pod.client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}, headers=ALICE)


async def stored(db: asyncpg.Connection, sid: str) -> list[tuple[str, str]]:
    rows = await db.fetch(
        "SELECT role, content FROM chat_messages WHERE session_id = $1 ORDER BY sequence", uuid.UUID(sid)
    )
    return [(r["role"], r["content"]) for r in rows]


async def replay(pod: Pod, task_id: str, **kwargs: Any) -> list[Frame]:
    reader = read(pod.client, "GET", f"/api/chat/tasks/{task_id}/stream", headers=ALICE, **kwargs)
    await reader.done()
    assert reader.status == 200 and reader.error is None
    return reader.frames


def assert_well_formed(frames: list[Frame]) -> None:
    assert check_body(body_of(frames)) == []
    assert frames[-1].data == "[DONE]" and sum(f.data == "[DONE]" for f in frames) == 1


# --- reconnecting on another pod --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("cursor", ["last-event-id", "after"])
async def test_reconnect_on_another_pod_gets_exactly_the_missing_frames(
    pods: tuple[Pod, Pod], db: asyncpg.Connection, cursor: str
) -> None:
    a, b = pods
    sid = await new_session(a.client)
    url = f"/api/chat/sessions/{sid}/stream"
    first: list[Frame] = []
    async with a.client.stream("POST", url, json={"message": SLOW}, headers=ALICE) as response:
        task_id = response.headers["x-copilot-task-id"]
        async for frame in frames_of(response):
            first.append(frame)
            if kinds(first).count("text-delta") >= 10:
                break  # the browser goes away mid-reply
    last_id = first[-1].id
    assert last_id is not None

    if cursor == "last-event-id":
        reader = read(b.client, "GET", f"/api/chat/tasks/{task_id}/stream", headers={**ALICE, "Last-Event-ID": last_id})
    else:
        reader = read(b.client, "GET", f"/api/chat/tasks/{task_id}/stream", params={"after": last_id}, headers=ALICE)
    await reader.done()
    assert reader.status == 200 and reader.error is None
    rest = reader.frames
    full = await replay(b, task_id)  # no cursor: everything from `start`

    assert kinds(full)[0] == "start" and kinds(full)[-2:] == ["finish", "[DONE]"]
    assert first + rest == full  # same ids, same data: no gap, no duplicate
    ids = [f.id for f in full if f.data != "[DONE]"]
    assert len(set(ids)) == len(ids)
    assert text_of(body_of(first)) + text_of(body_of(rest)) == text_of(body_of(full))
    assert len(text_of(body_of(full)).split()) == 120
    assert_well_formed(full)
    await wait_for(lambda: _has_reply(db, sid))
    assert (await stored(db, sid))[-1] == ("assistant", text_of(body_of(full)))


async def _has_reply(db: asyncpg.Connection, sid: str) -> bool:
    rows = await stored(db, sid)
    return bool(rows) and rows[-1][0] == "assistant"


@pytest.mark.slow
async def test_client_disconnect_does_not_stop_the_turn(pods: tuple[Pod, Pod], db: asyncpg.Connection) -> None:
    a, b = pods
    sid = await new_session(a.client)
    message = {"message": "[[mock:text tokens=40 delay_ms=10]]"}
    async with a.client.stream("POST", f"/api/chat/sessions/{sid}/stream", json=message, headers=ALICE) as r:
        async for _ in r.aiter_bytes():
            break  # the browser goes away after the first bytes
    await wait_for(lambda: _has_reply(db, sid))
    reply = (await stored(db, sid))[-1][1]
    assert len(reply.split()) == 40 and not reply.endswith("[interrupted]")
    detail = (await b.client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()
    assert detail["messages"][-1]["content"] == reply


# --- cancelling from another pod --------------------------------------------------------------------------


@pytest.mark.slow
async def test_cancel_from_another_pod_stops_the_turn(pods: tuple[Pod, Pod], db: asyncpg.Connection) -> None:
    a, b = pods
    sid = await new_session(a.client)
    reader = send(a, sid, "[[mock:text tokens=300 delay_ms=20]]")
    await reader.wait_for_text()

    r = await b.client.post(f"/api/chat/sessions/{sid}/cancel", headers=ALICE)
    cancelled_at = time.monotonic()
    assert r.status_code == 200, r.text
    assert r.json() == {"task_id": reader.task_id, "status": "cancelled"}
    await reader.done(within=10)
    assert reader.ended_at is not None and reader.ended_at - cancelled_at < 1.0

    assert kinds(reader.frames)[-3:] == ["abort", "finish", "[DONE]"]
    assert chunks(body_of(reader.frames))[-1]["finishReason"] == "other"
    assert_well_formed(reader.frames)
    assert await stored(db, sid) == [
        ("user", "[[mock:text tokens=300 delay_ms=20]]"),
        ("assistant", reader.text() + INTERRUPTED),
    ]
    assert len(reader.text().split()) < 300

    after = send(b, sid, '[[mock:text content="next one"]]')  # the session is free at once
    await after.done()
    assert after.status == 200 and after.text() == "next one"
    detail = (await b.client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()
    assert detail["active_task"] is None


@pytest.mark.slow
async def test_cancel_of_an_idle_session(pods: tuple[Pod, Pod]) -> None:
    _, b = pods
    sid = await new_session(b.client)
    r = await b.client.post(f"/api/chat/sessions/{sid}/cancel", headers=ALICE)
    assert r.json() == {"task_id": None, "status": "idle"}


# --- AI SDK resume ----------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_ai_sdk_resume_on_another_pod(pods: tuple[Pod, Pod], db: asyncpg.Connection) -> None:
    a, b = pods
    sid = await new_session(a.client)
    resume = f"/api/chat/sessions/{sid}/stream"
    assert (await b.client.get(resume, headers=ALICE)).status_code == 204

    original = send(a, sid, SLOW)
    await original.wait_for_text()
    resumed = read(b.client, "GET", resume, headers=ALICE)
    await asyncio.gather(original.done(), resumed.done())

    assert resumed.status == 200 and resumed.task_id == original.task_id
    assert kinds(resumed.frames)[0] == "start"  # the whole message, not only what is still to come
    assert resumed.frames == original.frames
    assert_well_formed(resumed.frames)
    await wait_for(lambda: _has_reply(db, sid))
    reply = (await stored(db, sid))[-1][1]
    assert resumed.text() == reply

    result = assemble(body_of(resumed.frames))
    assert result["violations"] == []
    message = result["chat"]["message"]
    assert "".join(p["text"] for p in message["parts"] if p["type"] == "text") == reply
    assert result["chat"]["finishReason"] == "stop"
    assert message["metadata"]["taskId"] == original.task_id

    await wait_for(lambda: _idle(b, sid))
    assert (await b.client.get(resume, headers=ALICE)).status_code == 204


async def _idle(pod: Pod, sid: str) -> bool:
    detail = (await pod.client.get(f"/api/chat/sessions/{sid}", headers=ALICE)).json()
    return detail["active_task"] is None


# --- a pod dies mid-turn ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_killed_pod_turn_is_closed_by_the_other_pod(pods: tuple[Pod, Pod], db: asyncpg.Connection) -> None:
    a, b = pods
    sid = await new_session(a.client)
    message = "[[mock:text tokens=1000 delay_ms=20]]"
    origin = send(a, sid, message)
    await origin.wait_for_text()
    assert origin.task_id is not None
    follower = read(b.client, "GET", f"/api/chat/tasks/{origin.task_id}/stream", headers=ALICE)
    await follower.wait_for_text(10)

    a.kill()
    killed_at = time.monotonic()
    await follower.done(within=15)
    assert follower.error is None and follower.ended_at is not None
    assert follower.ended_at - killed_at < 10  # 2s lease + a third of it + a heartbeat, with room to spare

    assert kinds(follower.frames)[-3:] == ["error", "finish", "[DONE]"]
    assert chunks(body_of(follower.frames))[-1]["finishReason"] == "error"
    assert_well_formed(follower.frames)
    partial = follower.text()
    assert 0 < len(partial.split()) < 1000

    await wait_for(lambda: _idle(b, sid))
    assert await stored(db, sid) == [("user", message), ("assistant", partial + INTERRUPTED)]
    assert (await b.client.get(f"/api/chat/sessions/{sid}/stream", headers=ALICE)).status_code == 204

    after = send(b, sid, '[[mock:text content="back again"]]')
    await after.done()
    assert after.status == 200 and after.text() == "back again"
    assert [role for role, _ in await stored(db, sid)] == ["user", "assistant", "user", "assistant"]


def entry_number(turn_id: str, entry_id: str) -> int:
    """`<base>-N` → N: the owner's entry ids count its chunks (see `backend.streams.turns.entry_id`)."""
    position = position_of(turn_id, entry_id)
    assert position is not None, entry_id
    return position


@pytest.mark.slow
async def test_a_killed_pods_partial_reply_is_what_can_be_replayed_and_a_client_shown_more_is_told(
    db: asyncpg.Connection, redis: Redis, mock_llm: MockLLMServer, tmp_path: Path
) -> None:
    """The client that started the turn reads the owner's memory, ahead of Redis by up to a publish window (1.5 s
    here). The owner is killed: the stored partial is exactly the text of the last step its Redis Stream holds (what
    any follower can replay), and the client, reconnecting with its cursor on the other pod, is told the reply was
    interrupted and that the end of what it saw was not kept, before `finish`."""
    env = {**pod_env(mock_llm), "COPILOT_PUBLISH_WINDOW_MS": "1500"}
    async with two_pods(env, tmp_path) as (a, b):
        sid = await new_session(a.client)
        message = "[[mock:text tokens=1000 delay_ms=20]]"
        origin = send(a, sid, message)
        await origin.wait_for_text()
        assert origin.task_id is not None
        task_id = origin.task_id
        events = keys.turn_events(task_id)

        async def kept_ids() -> list[str]:
            return [entry_id.decode() for entry_id, _ in await redis.xrange(events)]

        async def redis_has_text() -> bool:
            entries = await redis.xrange(events)
            return any(b'"text-delta"' in fields.get(b"c", b"") for _, fields in entries)

        await wait_for(redis_has_text)  # a window's write has landed
        last_kept = entry_number(task_id, (await kept_ids())[-1])

        async def shown_well_past_it() -> bool:
            cursor = origin.frames[-1].id
            return cursor is not None and entry_number(task_id, cursor) >= last_kept + 10

        await wait_for(shown_well_past_it)
        a.kill()
        await origin.done(within=15)
        cursor = origin.frames[-1].id
        assert cursor is not None
        owners = [entry_number(task_id, i) for i in await kept_ids() if is_owners_entry(task_id, i)]
        assert entry_number(task_id, cursor) > max(owners)  # it saw more than was kept

        reconnect = read(
            b.client, "GET", f"/api/chat/tasks/{origin.task_id}/stream", headers={**ALICE, "Last-Event-ID": cursor}
        )
        await reconnect.done(within=15)
        assert reconnect.status == 200 and reconnect.error is None
        assert kinds(reconnect.frames) == ["data-error", "error", "finish", "[DONE]"]
        code, error, finish = chunks(body_of(reconnect.frames))
        assert code["data"] == {"code": "interrupted", "retryable": True}
        assert error["errorText"].startswith("interrupted:") and "not kept" in error["errorText"]
        assert finish["finishReason"] == "error"

        await wait_for(lambda: _idle(b, sid))
        replayed = protocol_chunks(await redis.xrange(events))
        last_step = replayed[max(i for i, c in enumerate(replayed) if isinstance(c, protocol.StartStep)) :]
        kept_text = "".join(c.delta for c in last_step if isinstance(c, protocol.TextDelta))
        assert 0 < len(kept_text) < len(origin.text())
        assert await stored(db, sid) == [("user", message), ("assistant", kept_text + INTERRUPTED)]
        full_replay = await replay(b, origin.task_id)  # a follower from the start gets exactly what was stored
        assert text_of(body_of(full_replay)) == kept_text
        assert_well_formed(full_replay)


def protocol_chunks(entries: list[tuple[bytes, dict[bytes, bytes]]]) -> list[protocol.Chunk]:
    return [protocol.decode(fields[b"c"]) for _, fields in entries if b"c" in fields]


# --- unknown, foreign and expired tasks -------------------------------------------------------------------


async def test_unknown_foreign_and_expired_tasks(chat: tuple[httpx.AsyncClient, LiveServer], redis: Redis) -> None:
    client, _ = chat
    sid = await new_session(client)
    async with client.stream(
        "POST", f"/api/chat/sessions/{sid}/stream", json={"message": "[[mock:text tokens=3]]"}, headers=ALICE
    ) as r:
        task_id = r.headers["x-copilot-task-id"]
        await r.aread()
    url = f"/api/chat/tasks/{task_id}/stream"

    assert (await client.get(f"/api/chat/tasks/{uuid.uuid4()}/stream", headers=ALICE)).status_code == 404
    assert (await client.get(url, headers=BOB)).status_code == 404
    ok = await client.get(url, headers=ALICE)
    assert ok.status_code == 200 and types(ok.content)[0] == "start"

    await redis.delete(keys.turn_meta(task_id), keys.turn_events(task_id))  # expired; the tombstone remains
    gone = await client.get(url, headers=ALICE)
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "gone"
    assert (await client.get(url, headers=BOB)).status_code == 404
    assert (await client.get(url, headers={**ALICE, "Last-Event-ID": "1-0"})).status_code == 410


async def test_a_bad_cursor_is_rejected(chat: tuple[httpx.AsyncClient, LiveServer]) -> None:
    client, _ = chat
    url = f"/api/chat/tasks/{uuid.uuid4()}/stream"
    assert (await client.get(url, params={"after": "nope"}, headers=ALICE)).status_code == 422
    assert (await client.get(url, headers={**ALICE, "Last-Event-ID": "1-0 OR 1"})).status_code == 422


# --- double texting ---------------------------------------------------------------------------------------


async def test_double_texting_reject(chat: tuple[httpx.AsyncClient, LiveServer], db: asyncpg.Connection) -> None:
    client, _ = chat
    sid = await new_session(client)
    first = read(client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": SLOW}, headers=ALICE)
    await first.wait_for_text()
    r = await client.post(f"/api/chat/sessions/{sid}/stream", json={"message": "again"}, headers=ALICE)
    assert r.status_code == 409
    assert r.json()["error"]["details"]["active_task_id"] == first.task_id
    await first.done()
    assert kinds(first.frames)[-2:] == ["finish", "[DONE]"]
    assert [role for role, _ in await stored(db, sid)] == ["user", "assistant"]


async def test_double_texting_interrupt(chat_settings: Settings, db: asyncpg.Connection) -> None:
    settings = chat_settings.model_copy(update={"double_texting": "interrupt"})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        url = f"/api/chat/sessions/{sid}/stream"
        first = read(client, "POST", url, json={"message": SLOW}, headers=ALICE)
        await first.wait_for_text()
        second = read(client, "POST", url, json={"message": '[[mock:text content="instead"]]'}, headers=ALICE)
        await asyncio.gather(first.done(), second.done())

    assert kinds(first.frames)[-3:] == ["abort", "finish", "[DONE]"]
    assert second.status == 200 and second.text() == "instead" and second.task_id != first.task_id
    assert await stored(db, sid) == [
        ("user", SLOW),
        ("assistant", first.text() + INTERRUPTED),
        ("user", '[[mock:text content="instead"]]'),
        ("assistant", "instead"),
    ]


async def test_double_texting_enqueue(chat_settings: Settings, db: asyncpg.Connection) -> None:
    settings = chat_settings.model_copy(update={"double_texting": "enqueue"})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        url = f"/api/chat/sessions/{sid}/stream"
        message = "[[mock:text tokens=30 delay_ms=20]]"
        first = read(client, "POST", url, json={"message": message}, headers=ALICE)
        await first.wait_for_text()
        second = read(client, "POST", url, json={"message": '[[mock:text content="afterwards"]]'}, headers=ALICE)
        await asyncio.gather(first.done(), second.done())

    assert kinds(first.frames)[-2:] == ["finish", "[DONE]"] and "abort" not in kinds(first.frames)
    assert len(first.text().split()) == 30
    assert second.status == 200 and second.text() == "afterwards"
    assert await stored(db, sid) == [
        ("user", message),
        ("assistant", first.text()),
        ("user", '[[mock:text content="afterwards"]]'),
        ("assistant", "afterwards"),
    ]


# --- regressions ------------------------------------------------------------------------------------------


async def test_cancel_from_another_pod_waits_until_the_partial_reply_is_stored(
    chat_settings: Settings, db: asyncpg.Connection
) -> None:
    """Regression: the owner's supervisor cancelled the turn again on every poll while the cancel flag was set. The
    second cancellation cut short the wait for the partial reply's save, so the end was written and the session
    freed before the reply was stored (a message sent right after could be stored before it)."""
    async with (
        LiveServer(chat_settings) as a,
        LiveServer(chat_settings) as b,
        httpx.AsyncClient(base_url=a.url, timeout=30) as client_a,
        httpx.AsyncClient(base_url=b.url, timeout=30) as client_b,
    ):
        sid = await new_session(client_a)
        reader = read(client_a, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": SLOW}, headers=ALICE)
        await reader.wait_for_text()
        async with db.transaction():
            await db.execute("LOCK TABLE chat_messages IN EXCLUSIVE MODE")  # the partial reply's save waits
            cancel = asyncio.create_task(client_b.post(f"/api/chat/sessions/{sid}/cancel", headers=ALICE))
            await asyncio.sleep(1.0)  # several polls of the owner's supervisor
            assert not cancel.done() and reader.ended_at is None
        r = await cancel
        assert r.json() == {"task_id": reader.task_id, "status": "cancelled"}
        assert await stored(db, sid) == [("user", SLOW), ("assistant", reader.text() + INTERRUPTED)]
        await reader.done()
        assert kinds(reader.frames)[-3:] == ["abort", "finish", "[DONE]"]


async def test_cancel_returns_once_the_session_is_free(
    chat: tuple[httpx.AsyncClient, LiveServer], redis: Redis
) -> None:
    """Regression: cancel returned as soon as the turn's status flipped, but its owner frees the session a step later
    (after writing the end), so a message sent right after the cancel could get 409."""
    client, _ = chat
    sid = await new_session(client)
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    active = ActiveTurns(redis, lease_seconds=600)
    turn_id = str(uuid.uuid4())
    await registry.create(turn_id, sid, "alice")
    assert await active.claim(uuid.UUID(sid), turn_id)
    await registry.finish(turn_id, "cancelled")  # the owner has written the end but not yet freed the session

    cancel = asyncio.create_task(client.post(f"/api/chat/sessions/{sid}/cancel", headers=ALICE))
    await asyncio.sleep(0.3)
    assert not cancel.done()
    await active.release(uuid.UUID(sid), turn_id)
    r = await cancel
    assert r.json() == {"task_id": turn_id, "status": "cancelled"}
    after = read(client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": "hi"}, headers=ALICE)
    await after.done()
    assert after.status == 200


# --- followers on the turn's own pod ----------------------------------------------------------------------


async def test_the_owners_pod_streams_every_chunk_at_once_and_redis_catches_up(
    chat_settings: Settings, db: asyncpg.Connection, redis: Redis
) -> None:
    """The request that started a turn is served from memory: with a Redis write only every 3 s it still gets
    each token as the model sends it, and the stream in Redis (other pods, replays) ends up with the same entries."""
    settings = chat_settings.model_copy(update={"publish_window_ms": 3000.0})
    async with LiveServer(settings) as live, httpx.AsyncClient(base_url=live.url, timeout=30) as client:
        sid = await new_session(client)
        reader = send_to(client, sid, "[[mock:text tokens=40 delay_ms=20]]")
        await reader.wait_for_text(10)
        assert reader.task_id is not None
        in_redis = await redis.xlen(keys.turn_events(reader.task_id))
        assert in_redis < reader.deltas()  # what the client has seen did not come through Redis
        await reader.done()
        assert reader.frames == await replay_from(client, reader.task_id)
    assert_well_formed(reader.frames)
    assert len(reader.text().split()) == 40


def send_to(client: httpx.AsyncClient, sid: str, message: str) -> Reader:
    return read(client, "POST", f"/api/chat/sessions/{sid}/stream", json={"message": message}, headers=ALICE)


async def replay_from(client: httpx.AsyncClient, task_id: str) -> list[Frame]:
    reader = read(client, "GET", f"/api/chat/tasks/{task_id}/stream", headers=ALICE)
    await reader.done()
    assert reader.status == 200 and reader.error is None
    return reader.frames
