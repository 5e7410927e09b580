"""The load generator: N concurrent streams against one target, each timed at every text delta.

One lean HTTP/1.1 client (asyncio streams, chunked transfer decoding, SSE split by hand) reads every target: the
service's UI message stream and the chat completion chunks of the mock and of LiteLLM. The client's own cost is
the same on every side, so it cancels out of the differences, and it is small enough that 1,000 streams do not
need a core of their own. A large N is spread over one process per core; each process returns its streams'
records and the CPU it used.
"""

from __future__ import annotations

import asyncio
import resource
import time
from array import array
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Literal

import orjson

Wire = Literal["ui", "openai"]
"""`ui`: the AI SDK UI message stream (`text-delta` chunks); `openai`: `chat.completion.chunk`s."""


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """What one load process runs: its share of the virtual users of one measurement."""

    host: str
    port: int
    wire: Wire
    method: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    paths: tuple[str, ...]
    """One entry per stream, `rounds` consecutive entries per user: a user's streams run back to back."""
    users: tuple[int, ...]
    """Global index of each user of this process; user `i` starts at `start_at + ramp * i / total_users`."""
    total_users: int
    rounds: int
    start_at: float
    """Wall-clock time (`time.time()`) at which user 0 starts, shared by every process."""
    ramp_seconds: float
    timeout_seconds: float
    expected_tokens: int | None
    pause_seconds: float = 0.0
    """Pause between two streams of one user (lets a session's previous turn release it)."""
    follow_port: int | None = None
    """A second pod (same host): once a reply's response names its task (`x-copilot-task-id`), that task's stream is
    also read from this pod, as a browser that reconnected through the balancer would (`StreamRecord.follower`)."""


@dataclass(slots=True)
class StreamRecord:
    """One stream as the client saw it."""

    started: float
    """Wall-clock start (`time.time()`), comparable across processes."""
    ended: float = 0.0
    ttft: float | None = None
    """Seconds from sending the request to the first text delta."""
    gaps: array[float] = field(default_factory=lambda: array("d"))
    """Seconds between consecutive text deltas."""
    tokens: int = 0
    error: str | None = None
    total: float = 0.0
    """Seconds from sending the request to the end of the body."""
    finish_at: float | None = None
    """Seconds from sending the request to the reply's last chunk (`finish`; on the OpenAI wire the chunk with a
    `finish_reason`)."""
    body_end: float | None = None
    """Seconds from sending the request to the end of the body (its last byte, before the socket is closed)."""
    follower: StreamRecord | None = None
    """The same reply read from the other pod (`LoadSpec.follow_port`)."""

    @property
    def end_after_finish(self) -> float | None:
        """How long the response stays open after the reply finished: what a client waits in `streaming`."""
        if self.finish_at is None or self.body_end is None:
            return None
        return self.body_end - self.finish_at


@dataclass(slots=True)
class LoadResult:
    streams: list[StreamRecord]
    cpu_seconds: float
    """CPU (user + system) the load process spent on this measurement."""


class _HTTPError(Exception):
    pass


def run_load(spec: LoadSpec) -> LoadResult:
    """Entry point of a load process (also callable in-process): run the spec's users to the end."""
    import uvloop

    before = resource.getrusage(resource.RUSAGE_SELF)
    streams = uvloop.run(_run(spec))
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return LoadResult(streams, cpu)


async def _run(spec: LoadSpec) -> list[StreamRecord]:
    records: list[StreamRecord] = []
    head = _request_head(spec)
    await asyncio.gather(*(_user(spec, n, head, records) for n in range(len(spec.users))))
    return records


async def _user(spec: LoadSpec, n: int, head: bytes, records: list[StreamRecord]) -> None:
    start = spec.start_at + spec.ramp_seconds * spec.users[n] / max(1, spec.total_users)
    await asyncio.sleep(max(0.0, start - time.time()))
    for r in range(spec.rounds):
        if r and spec.pause_seconds:
            await asyncio.sleep(spec.pause_seconds)
        path = spec.paths[n * spec.rounds + r]
        records.append(await stream_once(spec, head, path))


def _request_head(spec: LoadSpec) -> bytes:
    lines = [f"Host: {spec.host}:{spec.port}", "Accept: text/event-stream", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in spec.headers]
    if spec.method != "GET":
        lines += ["Content-Type: application/json", f"Content-Length: {len(spec.body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def stream_once(spec: LoadSpec, head: bytes, path: str) -> StreamRecord:
    """One request, read to the end; every failure ends up in `error`, never raised."""
    record = StreamRecord(started=time.time())
    t0 = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    following: asyncio.Task[StreamRecord] | None = None
    try:
        async with asyncio.timeout(spec.timeout_seconds):
            reader, writer = await asyncio.open_connection(spec.host, spec.port, limit=1 << 20)
            writer.write(f"{spec.method} {path} HTTP/1.1\r\n".encode() + head)
            if spec.method != "GET":
                writer.write(spec.body)
            status, chunked, length, task_id = await _read_head(reader)
            if status != 200:
                body = await reader.read(600)
                raise _HTTPError(f"HTTP {status}: {body[:300].decode(errors='replace')}")
            if spec.follow_port is not None and task_id is not None:
                following = asyncio.create_task(_follow(spec, task_id))
            done = await _consume(spec.wire, _body(reader, chunked, length), record, t0)
            record.body_end = time.perf_counter() - t0
            if following is not None:
                record.follower = await following
            if record.error is None and not done:
                record.error = "stream ended without [DONE]"
    except TimeoutError:
        record.error = f"timeout after {spec.timeout_seconds:g}s"
    except _HTTPError as e:
        record.error = str(e)
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        record.error = f"{type(e).__name__}: {e}"
    finally:
        if writer is not None:
            writer.close()
        if following is not None and not following.done():
            following.cancel()  # the reply failed before its follower was awaited
    record.total = time.perf_counter() - t0
    record.ended = time.time()
    if record.error is None and spec.expected_tokens is not None and record.tokens != spec.expected_tokens:
        record.error = f"got {record.tokens} of {spec.expected_tokens} tokens"
    return record


async def _follow(spec: LoadSpec, task_id: str) -> StreamRecord:
    """The task's stream read from the other pod, from its start."""
    assert spec.follow_port is not None
    follower = replace(spec, port=spec.follow_port, method="GET", follow_port=None)
    return await stream_once(follower, _request_head(follower), f"/api/chat/tasks/{task_id}/stream")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, bool, int | None, str | None]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    chunked, length, task_id = False, None, None
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "content-length":
            length = int(value)
        elif name == "x-copilot-task-id":
            task_id = value
    return status, chunked, length, task_id


async def _body(reader: asyncio.StreamReader, chunked: bool, length: int | None) -> AsyncIterator[bytes]:
    if chunked:
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionResetError("connection closed in the middle of the body")
            size = int(line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                await reader.readline()
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    elif length is not None:
        yield await reader.readexactly(length)
    else:
        while data := await reader.read(65536):
            yield data


async def _consume(wire: Wire, body: AsyncIterator[bytes], record: StreamRecord, t0: float) -> bool:
    """Time every text delta of an SSE body; True once `[DONE]` arrived."""
    buffer = b""
    last = 0.0
    done = False
    async for data in body:
        now = time.perf_counter()
        buffer += data.replace(b"\r\n", b"\n") if b"\r" in data else data
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if not line.startswith(b"data:"):
                    continue  # `id:` lines and `: keep-alive` comments
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    continue
                text = _text_of(wire, payload, record, now - t0)
                if not text:
                    continue
                record.tokens += len(text.split())
                if record.ttft is None:
                    record.ttft = now - t0
                else:
                    record.gaps.append(now - last)
                last = now
    return done


def _text_of(wire: Wire, payload: bytes, record: StreamRecord, elapsed: float) -> str | None:
    """The text a chunk carries; notes an error chunk and the moment of the reply's finish in `record`."""
    chunk = orjson.loads(payload)
    if wire == "ui":
        kind = chunk.get("type")
        if kind == "text-delta":
            text: str | None = chunk.get("delta")
            return text
        if kind == "error":
            record.error = f"error chunk: {chunk.get('errorText')}"
        elif kind == "finish":
            record.finish_at = elapsed
        return None
    if "error" in chunk:
        record.error = f"error event: {str(chunk['error'])[:200]}"
        return None
    choices = chunk.get("choices") or ()
    if not choices:
        return None
    if choices[0].get("finish_reason"):
        record.finish_at = elapsed
    content: str | None = (choices[0].get("delta") or {}).get("content")
    return content


def split_users(spec: LoadSpec, processes: int) -> list[LoadSpec]:
    """The spec's users dealt round-robin over `processes` load processes (so each ramps over the same span)."""
    if processes <= 1:
        return [spec]
    parts = []
    for p in range(processes):
        idx = list(range(p, len(spec.users), processes))
        if not idx:
            continue
        paths = tuple(spec.paths[i * spec.rounds + r] for i in idx for r in range(spec.rounds))
        users = tuple(spec.users[i] for i in idx)
        parts.append(replace(spec, paths=paths, users=users))
    return parts
