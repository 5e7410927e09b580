"""What reading the model's streams costs the service's process, with its HTTP client against others.

`LLMClient.stream` reads N concurrent replies from the mock model (a process of its own, paced like the sweep:
100 tokens at 20 tokens/s), in this process, and the process's CPU per 1,000 model events is measured. The clients
take turns, round by round, so that the machine's drift falls on all:

- `stock`: the `openai` SDK's default HTTP client (httpcore on anyio) with its timeout per read, as the service
  read before `backend/chat/llm_http.py`;
- `httpx`: the SDK's client on asyncio's streams with no timer per read (`backend/chat/llm_http.py`), as the
  service read streamed replies before `backend/chat/llm_streams.py`, and as it reads them behind a proxy;
- `service`: what `LLMClient` does (`llm_streams`: aiohttp, the response parsed in C);
- `bare`: a floor, `bench/bare_model_reader.py` (httptools on an asyncio protocol, nothing else).

The CPU is all of this process's, the turn's event loop included, but nothing of the service's HTTP server,
storage or publishing: it is the model side of the per-token path only. Each round also times one call at a time
from its request to its first event (the median of 200, the mock answering at once): the model side of a turn's
first token.

`python -m bench.model_reads [--streams 100] [--tokens 100] [--delay-ms 50] [--rounds 4]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import openai
import uvloop

import backend.chat.llm as llm_module
from backend.chat.llm import LLMClient, RetryPolicy
from bench.bare_model_reader import BareModelReader
from bench.procs import free_port, launched
from bench.settings import ROOT

CLIENTS = ("stock", "httpx", "service", "bare")


@contextmanager
def _client(kind: str, base_url: str) -> Iterator[LLMClient]:
    llm = LLMClient(base_url=base_url, api_key="bench", model="mock", retry=RetryPolicy(0), idle_timeout=30.0)
    streaming = llm_module._STREAMING
    bare = None
    if kind == "bare":
        url = urlsplit(base_url)
        bare = BareModelReader(
            llm, url.hostname or "127.0.0.1", url.port or 80, f"{url.path}/chat/completions", "bench"
        )
        llm._stream_body = bare.stream_body  # type: ignore[method-assign]
    if kind == "stock":
        llm._client = openai.AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0)
        llm_module._STREAMING = openai.DEFAULT_TIMEOUT  # a timeout per read, as before
    if kind in ("stock", "httpx"):
        llm._streams.direct = False  # through the SDK's client, as a proxied model is read
    try:
        yield llm
    finally:
        llm_module._STREAMING = streaming
        if bare is not None:
            bare.close()


async def _events_per_cpu_second(llm: LLMClient, streams: int, marker: str) -> tuple[int, float]:
    messages = [{"role": "user", "content": marker}]

    async def one() -> int:
        return sum([1 async for _ in llm.stream(messages)])

    await asyncio.gather(*(one() for _ in range(streams)))  # connections opened, code warm
    cpu = time.process_time()
    events = sum(await asyncio.gather(*(one() for _ in range(streams))))
    return events, time.process_time() - cpu


async def _first_event_ms(llm: LLMClient, calls: int = 200) -> float:
    messages = [{"role": "user", "content": "[[mock:text tokens=3 delay_ms=0]]"}]
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        events = cast(AsyncGenerator[object, None], llm.stream(messages))  # an async generator, typed as an iterator
        async with contextlib.aclosing(events):
            await anext(events)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def measure(
    streams: int, tokens: int, delay_ms: float, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    port = free_port()
    args = [sys.executable, "-c", f"from backend.devtools.mock_llm import run; run('127.0.0.1', {port})"]
    base_url = f"http://127.0.0.1:{port}/v1"
    marker = f"[[mock:text tokens={tokens} delay_ms={delay_ms:g}]]"
    figures: dict[str, list[float]] = {kind: [] for kind in CLIENTS}
    first: dict[str, list[float]] = {kind: [] for kind in CLIENTS}
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    async with launched("mock", args, env=env, ready_url=f"{base_url}/models", log_dir=Path(ROOT, ".bench", "logs")):
        for n in range(rounds):
            for kind in CLIENTS if n % 2 == 0 else reversed(CLIENTS):
                with _client(kind, base_url) as llm:
                    events, cpu = await _events_per_cpu_second(llm, streams, marker)
                    first[kind].append(round(await _first_event_ms(llm), 3))
                    await llm.close()
                figures[kind].append(round(cpu * 1e6 / events, 1))
                print(
                    f"round {n + 1} {kind:8} {events} events, {figures[kind][-1]} ms CPU per 1,000; "
                    f"first event {first[kind][-1]} ms",
                    flush=True,
                )
    return figures, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=4)
    a = parser.parse_args()
    figures, first = uvloop.run(measure(a.streams, a.tokens, a.delay_ms, a.rounds))
    for what, values in (("ms CPU per 1,000 model events", figures), ("ms to the first event", first)):
        stock, httpx, service, bare = (round(statistics.median(values[kind]), 3) for kind in CLIENTS)
        print(
            f"median {what}: stock {stock}, httpx {httpx}, service {service} ({service / httpx - 1:+.0%} against "
            f"httpx), bare {bare}"
        )


if __name__ == "__main__":
    main()
