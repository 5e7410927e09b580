"""The request-head limit: a real `copilot serve` process, configured as in production, sent 64 MB headers.

uvicorn parses the request line and headers before the ASGI app sees anything, so the limit can only hold in the
server's protocol; these tests run the real `copilot serve` in a child process and watch its memory with psutil.
The app's own check (for other servers) is tested on the in-process `LiveServer`, which uses plain uvicorn.
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from backend.config import Settings
from tests.conftest import JWT_SECRET, LiveServer, auth
from tests.helpers import free_port

HEADER_LIMIT = 16 * 1024
"""The default of COPILOT_MAX_HEADER_BYTES (the `copilot serve` tests also set it explicitly)."""
ATTACK_BYTES = 64 * 1024 * 1024
CHUNK = 64 * 1024


@dataclass
class Served:
    url: str
    port: int
    process: psutil.Process


@pytest.fixture
async def served(settings: Settings, tmp_path: Path) -> AsyncIterator[Served]:
    """`copilot serve` in a child process, in production mode, on the tests' Postgres and Redis."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[2]),
        "COPILOT_ENVIRONMENT": "production",
        "COPILOT_JWT_SECRET": JWT_SECRET,
        "DATABASE_URL": str(settings.database_url),
        "REDIS_URL": str(settings.redis_url),
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",  # never called here
        "OPENAI_API_KEY": "unused",
        "COPILOT_LOG_LEVEL": "WARNING",
        "COPILOT_MAX_HEADER_BYTES": str(HEADER_LIMIT),
    }
    child = await asyncio.create_subprocess_exec(
        # cwd: not the checkout, so no stray .env is read
        sys.executable,
        "-m",
        "backend.cli",
        "serve",
        "--port",
        str(port),
        env=env,
        cwd=tmp_path,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as client:
            for _ in range(300):
                if child.returncode is not None:
                    raise AssertionError(f"copilot serve exited with {child.returncode}")
                try:
                    if (await client.get("/health/live")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("copilot serve did not start")
        yield Served(url, port, psutil.Process(child.pid))
    finally:
        if child.returncode is None:
            child.terminate()
            try:
                await asyncio.wait_for(child.wait(), 15)
            except TimeoutError:
                child.kill()
                await child.wait()


@dataclass
class Outcome:
    sent: int
    answer: bytes
    seconds: float


def send_huge_header(port: int, total: int = ATTACK_BYTES) -> Outcome:
    """Stream one request whose `Authorization` header is `total` bytes; stop when the server answers or closes."""
    started = time.monotonic()
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"GET /api/chat/sessions HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ")
        block = b"a" * CHUNK
        try:
            while sent < total:
                readable, _, _ = select.select([conn], [], [], 0)
                if readable:
                    break
                conn.sendall(block)
                sent += len(block)
            if sent >= total:
                conn.sendall(b"\r\n\r\n")
            answer = conn.recv(4096)
        except (ConnectionResetError, BrokenPipeError):
            try:
                answer = conn.recv(4096)
            except OSError:
                answer = b""
    return Outcome(sent, answer, time.monotonic() - started)


def assert_refused_early(outcome: Outcome) -> None:
    assert outcome.answer == b"" or outcome.answer.startswith(b"HTTP/1.1 431 "), outcome.answer[:200]
    # The server stopped reading near the limit: at most what the socket buffers on both sides held meanwhile.
    assert outcome.sent < ATTACK_BYTES // 4, f"the server read {outcome.sent} bytes of header before refusing"


@pytest.mark.slow
async def test_a_64_mb_header_is_refused_without_reading_it_and_memory_stays_flat(served: Served) -> None:
    async with httpx.AsyncClient(base_url=served.url, timeout=5) as client:
        for _ in range(5):  # warm up: the first requests allocate what every request needs
            assert (await client.get("/api/chat/sessions", headers=auth("alice"))).status_code == 200
        baseline = served.process.memory_info().rss

        async def probe_health() -> list[float]:
            latencies = []
            for _ in range(10):
                began = time.monotonic()
                assert (await client.get("/health/live")).status_code == 200
                latencies.append(time.monotonic() - began)
                await asyncio.sleep(0.05)
            return latencies

        for _ in range(2):  # three at once, twice
            *outcomes, latencies = await asyncio.gather(
                *(asyncio.to_thread(send_huge_header, served.port) for _ in range(3)), probe_health()
            )
            for outcome in outcomes:
                print(f"sent {outcome.sent} bytes in {outcome.seconds:.2f} s, answer {outcome.answer[:40]!r}")
                assert_refused_early(outcome)
            assert max(latencies) < 2.0, latencies  # generous for a loaded machine; the attack took ~5 s per request

        grown = served.process.memory_info().rss - baseline
        print(f"RSS {baseline / 2**20:.1f} MB before, grew by {grown / 2**20:.2f} MB")
        assert grown < 16 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MB"
        assert (await client.get("/api/chat/sessions", headers=auth("alice"))).status_code == 200


@pytest.mark.slow
async def test_a_head_just_over_the_limit_gets_431_and_one_under_it_is_served(served: Served) -> None:
    token = auth("alice")["Authorization"]
    async with httpx.AsyncClient(base_url=served.url, timeout=5) as client:
        padding = {"x-padding": "p" * (HEADER_LIMIT - 1024)}
        r = await client.get("/api/chat/sessions", headers={"authorization": token} | padding)
        assert r.status_code == 200, r.text[:200]

        r = await client.get("/api/chat/sessions", headers={"authorization": token, "x-padding": "p" * HEADER_LIMIT})
        assert r.status_code == 431
        assert r.json()["error"]["code"] == "headers_too_large" and str(HEADER_LIMIT) in r.json()["error"]["message"]

        r = await client.get("/api/chat/sessions", params={"q": "q" * HEADER_LIMIT}, headers={"authorization": token})
        assert r.status_code == 431  # the request line counts too

        # Bodies are not headers: a body far above the head limit (and within COPILOT_MAX_BODY_BYTES) is read.
        big = {"title": "t" * 100, "x": "y" * 200_000}
        r = await client.post("/api/chat/sessions", json=big, headers=auth("alice"))
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"

        # On one keep-alive connection, each request's head is counted afresh after the previous body.
        headers = padding | {"authorization": token}
        for _ in range(3):
            r = await client.post("/api/chat/sessions", json={"metadata": {"k": "v" * 10_000}}, headers=headers)
            assert r.status_code == 201, r.text[:200]


async def test_under_another_server_the_app_still_answers_431(client: httpx.AsyncClient) -> None:
    # `LiveServer` runs plain uvicorn, which reads any head: the app's HeaderLimit is what refuses it.
    big = {"x-padding": "p" * (HEADER_LIMIT + 1)}
    r = await client.get("/api/chat/sessions", headers=auth("alice") | big)
    assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
    assert (await client.get("/api/chat/sessions", headers=auth("alice"))).status_code == 200


async def test_under_another_server_a_websocket_handshake_with_huge_headers_is_refused(server: LiveServer) -> None:
    # Several headers, each below the websockets library's own 8 KB line limit, together above ours.
    big = {f"x-padding-{i}": "p" * 6000 for i in range(3)}
    url = f"ws://127.0.0.1:{server.port}/api/chat/sessions/{uuid.uuid4()}/ws"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers=auth("alice") | big, proxy=None, open_timeout=5):
            pass
    assert refused.value.response.status_code == 403
