"""One measurement: run a load against an endpoint while counting what every process and store spent.

`Endpoint` says how to reach a target (floor, service, LiteLLM) and which processes to charge; `measure` runs a
`LoadSpec` over the load processes and returns a `Measurement` with the client-side timings (TTFT, gaps, tokens,
errors) next to the CPU of the target, the mock, the load generator, Redis and Postgres, the target's peak
resident memory, and the Redis command and round-trip counts.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psutil
from redis.asyncio import Redis

from bench import stores
from bench.loadgen import LoadResult, LoadSpec, StreamRecord, Wire, run_load, split_users
from bench.procs import RssPeak, cpu_delta, cpu_snapshot


@dataclass(frozen=True)
class Endpoint:
    name: str
    wire: Wire
    port: int
    headers: tuple[tuple[str, str], ...]
    tree: Callable[[], list[psutil.Process]]
    """Processes charged for the target's CPU and memory (for the floor: the mock itself)."""
    counts_redis: bool = False


@dataclass(frozen=True)
class Meters:
    """Process trees charged separately in every measurement."""

    mock: Callable[[], list[psutil.Process]]
    redis_server: Callable[[], list[psutil.Process]]
    postgres: Callable[[], list[psutil.Process]]
    redis: Redis
    pool: ProcessPoolExecutor
    cores: int


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..1) of `values`, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


@dataclass
class Measurement:
    target: str
    streams: int
    """Streams attempted."""
    concurrency: int
    """Virtual users (each runs `rounds` streams back to back)."""
    rounds: int
    errors: int
    error_samples: list[str]
    ttft_ms: dict[str, float | None]
    gap_ms: dict[str, float | None]
    total_ms: dict[str, float | None]
    end_after_finish_ms: dict[str, float | None]
    """From the reply's `finish` chunk to the end of the response."""
    tokens: int
    wall_seconds: float
    tokens_per_second: float
    peak_open_streams: int
    cpu_seconds: dict[str, float]
    """`target`, `mock`, `loadgen`, `redis`, `postgres`."""
    rss_baseline_mb: float
    rss_peak_mb: float
    redis: dict[str, Any] = field(default_factory=dict)
    overloaded: int = 0
    """Errors that were the service's 503 `overloaded` refusal (counted in `errors` too)."""
    follower_end_after_finish_ms: dict[str, float | None] = field(default_factory=dict)
    """With `LoadSpec.follow_port`: the same figure for the reply read from the other pod."""
    follower_errors: int = 0
    """Replies whose read from the other pod failed or never started (the reply itself failed)."""
    follower_first_token_lag_ms: dict[str, float | None] = field(default_factory=dict)
    """With `LoadSpec.follow_port`: how long after the owner's client the follower on the other pod saw the first
    token (wall clock, the same client process)."""

    @property
    def rss_per_stream_kb(self) -> float:
        return (self.rss_peak_mb - self.rss_baseline_mb) * 1024 / max(1, self.peak_open_streams)

    def cpu_ms_per_1k_tokens(self, *parts: str) -> float | None:
        if not self.tokens:
            return None
        return sum(self.cpu_seconds[p] for p in parts) * 1e6 / self.tokens

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items()}
        d["rss_per_stream_kb"] = round(self.rss_per_stream_kb, 2)
        d["cpu_ms_per_1k_tokens"] = {
            "target": _round(self.cpu_ms_per_1k_tokens("target")),
            "target_and_stores": _round(self.cpu_ms_per_1k_tokens("target", "redis", "postgres")),
            "mock": _round(self.cpu_ms_per_1k_tokens("mock")),
            "loadgen": _round(self.cpu_ms_per_1k_tokens("loadgen")),
        }
        return d


def _round(v: float | None, n: int = 3) -> float | None:
    return None if v is None else round(v, n)


async def measure(endpoint: Endpoint, meters: Meters, spec: LoadSpec, *, processes: int = 1) -> Measurement:
    """Run `spec` (its users spread over `processes` load processes) and count everything it cost."""
    trees = {
        "target": endpoint.tree,
        "mock": meters.mock,
        "redis": meters.redis_server,
        "postgres": meters.postgres,
    }
    before = {k: cpu_snapshot(t()) for k, t in trees.items()}
    redis_before = await stores.redis_counters(meters.redis) if endpoint.counts_redis else None
    loop = asyncio.get_running_loop()
    parts = split_users(spec, processes)
    async with RssPeak(endpoint.tree) as rss:
        results: list[LoadResult] = await asyncio.gather(
            *(loop.run_in_executor(meters.pool, run_load, part) for part in parts)
        )
    after = {k: cpu_snapshot(t()) for k, t in trees.items()}
    redis_delta = None
    if redis_before is not None:
        redis_delta = (await stores.redis_counters(meters.redis)).minus(redis_before)
    if endpoint.name == "floor":
        before["target"], after["target"] = before["mock"], after["mock"]
    cpu = {k: round(cpu_delta(before[k], after[k]), 4) for k in trees}
    cpu["loadgen"] = round(sum(r.cpu_seconds for r in results), 4)
    records = [s for r in results for s in r.streams]
    return summarise(endpoint.name, spec, records, cpu, rss, redis_delta)


def summarise(
    target: str,
    spec: LoadSpec,
    records: list[StreamRecord],
    cpu: dict[str, float],
    rss: RssPeak,
    redis: stores.RedisCounters | None,
) -> Measurement:
    ok = [r for r in records if r.error is None]
    followers = [r.follower for r in ok if r.follower is not None and r.follower.error is None]
    errors = Counter(r.error for r in records if r.error is not None)
    ttfts = [r.ttft for r in ok if r.ttft is not None]
    gaps = [g for r in ok for g in r.gaps]
    tokens = sum(r.tokens for r in records)
    start = min((r.started for r in records), default=0.0)
    end = max((r.ended for r in records), default=0.0)
    wall = max(1e-9, end - start)
    m = Measurement(
        target=target,
        streams=len(records),
        concurrency=len(spec.users),
        rounds=spec.rounds,
        errors=sum(errors.values()),
        error_samples=[f"{n}x {e}" for e, n in errors.most_common(3)],
        ttft_ms=_dist(ttfts),
        gap_ms=_dist(gaps),
        total_ms=_dist([r.total for r in ok]),
        end_after_finish_ms=_dist([v for r in ok if (v := r.end_after_finish) is not None]),
        tokens=tokens,
        wall_seconds=round(wall, 3),
        tokens_per_second=round(tokens / wall, 1),
        peak_open_streams=peak_overlap(records),
        cpu_seconds=cpu,
        rss_baseline_mb=round(rss.baseline / 2**20, 2),
        rss_peak_mb=round(rss.peak / 2**20, 2),
        overloaded=sum(n for e, n in errors.items() if e.startswith("HTTP 503") and '"overloaded"' in e),
        follower_end_after_finish_ms=_dist([v for f in followers if (v := f.end_after_finish) is not None]),
        follower_errors=0 if spec.follow_port is None else len(records) - len(followers),
        follower_first_token_lag_ms=_dist([v for r in ok if (v := _first_token_lag(r)) is not None]),
    )
    if redis is not None:
        m.redis = {
            "commands": redis.commands,
            "reads": redis.reads,
            "commands_per_token": round(redis.commands / tokens, 4) if tokens else None,
            "round_trips_per_token": round(redis.reads / tokens, 4) if tokens else None,
            "bytes_out_per_stream": round(redis.bytes_out / len(records)) if records else None,
            "per_command": dict(sorted(redis.per_command.items(), key=lambda kv: -kv[1])[:12]),
        }
    return m


def _first_token_lag(record: StreamRecord) -> float | None:
    """Seconds from the owner's client seeing the reply's first token to the follower's seeing it."""
    follower = record.follower
    if follower is None or follower.error is not None or follower.ttft is None or record.ttft is None:
        return None
    return (follower.started + follower.ttft) - (record.started + record.ttft)


def _dist(values: Sequence[float]) -> dict[str, float | None]:
    return {"p50": ms(pct(values, 0.5)), "p90": ms(pct(values, 0.9)), "p99": ms(pct(values, 0.99)), "n": len(values)}


def peak_overlap(records: Sequence[StreamRecord]) -> int:
    events = sorted([(r.started, 1) for r in records] + [(r.ended, -1) for r in records])
    open_, peak = 0, 0
    for _, step in events:
        open_ += step
        peak = max(peak, open_)
    return peak


def load_spec(
    endpoint: Endpoint,
    *,
    paths: Sequence[str],
    body: bytes,
    rounds: int,
    ramp_seconds: float,
    timeout_seconds: float,
    expected_tokens: int | None,
    method: str = "POST",
    pause_seconds: float = 0.0,
    start_delay: float = 0.3,
    follow_port: int | None = None,
) -> LoadSpec:
    """A spec for `len(paths) / rounds` users; user i runs paths[i*rounds : (i+1)*rounds]."""
    users = len(paths) // rounds
    return LoadSpec(
        host="127.0.0.1",
        port=endpoint.port,
        wire=endpoint.wire,
        method=method,
        headers=endpoint.headers,
        body=body,
        paths=tuple(paths),
        users=tuple(range(users)),
        total_users=users,
        rounds=rounds,
        start_at=time.time() + start_delay,
        ramp_seconds=ramp_seconds,
        timeout_seconds=timeout_seconds,
        expected_tokens=expected_tokens,
        pause_seconds=pause_seconds,
        follow_port=follow_port,
    )
