"""What a benchmark run measures: stream counts, token count and pace, history sizes, and where things run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class BenchSettings:
    quick: bool = False
    streams: tuple[int, ...] = (1, 10, 100, 500, 1000)
    """Concurrent streams of the sweep."""
    tokens: int = 100
    """Tokens of every streamed reply in the sweep."""
    delay_ms: float = 50.0
    """Pause between two tokens of the mock: 50 ms is 20 tokens/s."""
    min_samples: int = 8
    """A sweep point runs at least this many streams (N=1 runs them one after another)."""
    service_workers: tuple[int, ...] = (1, 2)
    litellm: bool = True
    litellm_workers: int = 1
    history_sizes: tuple[int, ...] = (10, 100, 1000, 5000)
    history_turns: int = 30
    history_warmup: int = 3
    history_tokens: int = 5
    max_live_messages: int = 400
    """The service's `COPILOT_CONTEXT_MAX_LIVE_MESSAGES`: a history over it is seeded as compaction leaves it."""
    replay_chunks: int = 10_000
    replay_rounds: int = 3
    idle_seconds: float = 3.0
    settle_seconds: float = 1.0
    """Pause after each measurement of the sweep."""
    """The target's CPU is also measured with no load for this long (its background work)."""
    storage_turns: int = 20
    """Sequential turns over which Postgres is counted; 0 leaves it out (it needs a 10 s quiet period first)."""
    profile: bool = True
    profile_streams: int = 100
    """Concurrent streams while py-spy samples the service (one worker)."""
    profile_seconds: float = 20.0
    overload_streams: int = 1000
    """Streams offered at once to one worker capped at each of `overload_caps` running turns (0: no overload phase)."""
    overload_caps: tuple[int, ...] = (100, 200)
    """`COPILOT_MAX_CONCURRENT_TURNS` of the overload phase, one run each: the default and twice it."""
    server: str = "uvicorn"
    """The ASGI server the service runs on: `uvicorn` (as `copilot serve`) or `granian` (`--server`)."""
    service_env: tuple[tuple[str, str], ...] = ()
    """Extra settings for the service (`--service-env`), applied over the benchmark's own."""
    targets: tuple[str, ...] = ()
    """Only these targets (floor, service-1w, service-2w, litellm); empty: all."""
    wait_for_idle: bool = True
    admin_database_url: str = field(
        default_factory=lambda: os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    )
    """A database to connect to for creating (and reading the counters of) the benchmark's own database."""
    database_name: str = field(default_factory=lambda: os.environ.get("BENCH_DATABASE_NAME", "copilot_bench"))
    """The benchmark's own database, dropped and created by each run: two runs at once need two names."""
    redis_url: str = field(default_factory=lambda: os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"))
    """A Redis database the run flushes (the tests use 9, scripts/bench_registry.py 8)."""
    out_dir: Path = ROOT / "docs"
    work_dir: Path = ROOT / ".bench"

    @classmethod
    def quick_mode(cls, **overrides: object) -> BenchSettings:
        base: dict[str, object] = {
            "quick": True,
            "streams": (1, 10, 100),
            "tokens": 20,
            "min_samples": 2,
            "history_sizes": (10, 1000),
            "history_turns": 4,
            "history_warmup": 1,
            "replay_chunks": 2000,
            "replay_rounds": 1,
            "storage_turns": 0,
            "idle_seconds": 0.5,
            "settle_seconds": 0.25,
            "profile": False,
            "overload_streams": 300,
            "overload_caps": (100,),
            "profile_streams": 100,
            "profile_seconds": 8.0,
        }
        return cls(**{**base, **overrides})  # type: ignore[arg-type]

    @property
    def stream_seconds(self) -> float:
        """Nominal length of one sweep stream."""
        return self.tokens * self.delay_ms / 1000

    def wants(self, target: str) -> bool:
        return not self.targets or target in self.targets
