"""Benchmark of the turn registry in the streaming path (a script that prints figures, never a timed test).

Starts, on loopback, the mock model and the service as separate processes on the local PostgreSQL and Redis, then
measures in one run:

- time to first token (TTFT) of the mock called directly with the `openai` SDK (the floor) and through the
  service (session → turn → Redis Stream → SSE), and the difference;
- Redis commands and socket reads (round trips) per streamed token, from `INFO` before and after;
- the time to replay a finished 10,000-chunk turn over `GET /api/chat/tasks/{id}/stream`.

Usage: .venv/bin/python scripts/bench_registry.py [--turns 30] [--tokens 50] [--delay-ms 10]
Environment: BENCH_DATABASE_URL (default postgresql://postgres@127.0.0.1:5432/test),
BENCH_REDIS_URL (default redis://127.0.0.1:6379/8, flushed by the run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import jwt
import openai
from redis.asyncio import Redis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend.chat import protocol  # noqa: E402
from backend.streams.turns import TurnRegistry  # noqa: E402

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
SECRET = "bench-secret-that-is-long-enough-for-hs256"
USER = "bench-user"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _wait_ready(url: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(300):
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} never became ready")


@asynccontextmanager
async def process(args: list[str], env: dict[str, str], ready_url: str) -> AsyncIterator[None]:
    proc = await asyncio.create_subprocess_exec(
        *args, env={**os.environ, **env}, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await _wait_ready(ready_url)
        yield
    finally:
        proc.terminate()
        await proc.wait()


async def floor_ttft(base_url: str, n: int, tokens: int) -> list[float]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        stream = await client.chat.completions.create(
            model="mock-model",
            messages=[{"role": "user", "content": f"[[mock:text tokens={tokens}]]"}],
            stream=True,
        )
        first = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - start
        samples.append(first or 0.0)
    await client.close()
    return samples


async def service_ttft(url: str, n: int, tokens: int) -> tuple[list[float], int]:
    headers = {"Authorization": "Bearer " + jwt.encode({"sub": USER, "exp": time.time() + 3600}, SECRET, "HS256")}
    samples, streamed = [], 0
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        for _ in range(n):
            sid = (await client.post("/api/chat/sessions", json={"title": "bench"})).json()["id"]
            start = time.perf_counter()
            first = None
            body = {"message": f"[[mock:text tokens={tokens}]]"}
            async with client.stream("POST", f"/api/chat/sessions/{sid}/stream", json=body) as r:
                async for line in r.aiter_lines():
                    if first is None and '"text-delta"' in line:
                        first = time.perf_counter() - start
            samples.append(first or 0.0)
            streamed += tokens
            await asyncio.sleep(0.05)  # let the turn store its reply before the next one
    return samples, streamed


async def redis_counters(redis: Redis) -> tuple[int, int]:
    stats = await redis.info("stats")
    return int(stats["total_commands_processed"]), int(stats.get("total_reads_processed", 0))


async def replay_time(url: str, redis: Redis, chunks: int) -> float:
    registry = TurnRegistry(redis, ttl_seconds=600, lease_seconds=30)
    turn_id = str(uuid.uuid4())
    await registry.create(turn_id, str(uuid.uuid4()), USER)
    payload = protocol.to_json(protocol.TextDelta(id="t", delta="word "))
    for start in range(0, chunks, 1000):
        await registry.publish(turn_id, [payload] * min(1000, chunks - start))
    await registry.finish(turn_id, "completed")
    headers = {"Authorization": "Bearer " + jwt.encode({"sub": USER, "exp": time.time() + 3600}, SECRET, "HS256")}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        start_t = time.perf_counter()
        async with client.stream("GET", f"/api/chat/tasks/{turn_id}/stream") as r:
            body = await r.aread()
        elapsed = time.perf_counter() - start_t
    got = body.count(b'"text-delta"')
    if got != chunks:
        raise RuntimeError(f"replay returned {got} of {chunks} chunks")
    return elapsed


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=30)
    parser.add_argument("--tokens", type=int, default=50)
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--replay-chunks", type=int, default=10_000)
    args = parser.parse_args()

    redis = Redis.from_url(REDIS_URL)
    await redis.flushdb()
    python = sys.executable
    mock_port, app_port = _free_port(), _free_port()
    mock_url, app_url = f"http://127.0.0.1:{mock_port}", f"http://127.0.0.1:{app_port}"
    mock_cmd = [
        python,
        "-c",
        f"from backend.devtools.mock_llm import run; run('127.0.0.1', {mock_port}, "
        f"default_delay_ms={args.delay_ms}, log_level='warning')",
    ]
    app_env = {
        "DATABASE_URL": DATABASE_URL,
        "REDIS_URL": REDIS_URL,
        "OPENAI_BASE_URL": mock_url + "/v1",
        "OPENAI_API_KEY": "bench",
        "COPILOT_MODEL": "mock-model",
        "COPILOT_JWT_SECRET": SECRET,
        "COPILOT_LOG_LEVEL": "WARNING",
        # The per-user limits would add their own Redis commands to the counts and refuse a fast run.
        "COPILOT_RATE_LIMIT_REQUESTS_PER_MINUTE": "0",
        "COPILOT_RATE_LIMIT_CONCURRENT_TURNS": "0",
        "COPILOT_RATE_LIMIT_TOKENS_PER_DAY": "0",
        "PYTHONPATH": str(ROOT),
    }
    app_cmd = [python, "-m", "backend.cli", "serve", "--port", str(app_port)]
    async with (
        process(mock_cmd, {"PYTHONPATH": str(ROOT)}, mock_url + "/v1/models"),
        process(app_cmd, app_env, app_url + "/health/ready"),
    ):
        await floor_ttft(mock_url + "/v1", 3, args.tokens)  # warm-up
        await service_ttft(app_url, 3, args.tokens)
        floor = await floor_ttft(mock_url + "/v1", args.turns, args.tokens)
        before = await redis_counters(redis)
        service, tokens = await service_ttft(app_url, args.turns, args.tokens)
        after = await redis_counters(redis)
        replay = await replay_time(app_url, redis, args.replay_chunks)
    await redis.aclose()

    commands, reads = after[0] - before[0], after[1] - before[1]
    print(f"turns={args.turns} tokens/turn={args.tokens} token interval={args.delay_ms} ms")
    print(f"{'':28}{'p50 ms':>10}{'p99 ms':>10}")
    print(f"{'TTFT direct (floor)':28}{pct(floor, 0.5):10.2f}{pct(floor, 0.99):10.2f}")
    print(f"{'TTFT through the service':28}{pct(service, 0.5):10.2f}{pct(service, 0.99):10.2f}")
    print(f"{'added TTFT':28}{pct(service, 0.5) - pct(floor, 0.5):10.2f}{pct(service, 0.99) - pct(floor, 0.99):10.2f}")
    print(
        f"Redis commands per streamed token:   {commands / tokens:.3f}  (all commands of the run, incl. "
        "session cache and turn bookkeeping)"
    )
    print(f"Redis socket reads per streamed token: {reads / tokens:.3f}  (≈ round trips)")
    print(
        f"replay of a {args.replay_chunks}-chunk finished turn: {replay * 1000:.0f} ms "
        f"({args.replay_chunks / replay:,.0f} chunks/s)"
    )


if __name__ == "__main__":
    asyncio.run(main())
