"""The benchmark run, phase by phase, every peer on the same mock model in the same run.

1. The floor: the mock called directly (stream sweep, history-sized prompts, a 10,000-chunk reply).
2. The service with one uvicorn worker: the sweep, the history sizes, a py-spy profile under load, the replay of a
   finished 10,000-chunk turn, and Postgres counters over sequential turns.
3. The service with two workers: the sweep.
4. LiteLLM proxy: the sweep and a 10,000-chunk reply (reported as unavailable, with the reason, if it cannot run).

Each target runs alone on the machine; the mock runs throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jwt
import orjson
from redis.asyncio import Redis

from backend.store.sessions import SessionStore
from bench import litellm_peer, profile, stores
from bench.measure import Endpoint, Measurement, Meters, load_spec, measure
from bench.procs import (
    Launched,
    StartError,
    busy_processes,
    cpu_delta,
    cpu_snapshot,
    free_port,
    launched,
    pid_tree,
    postgres_tree,
)
from bench.settings import ROOT, BenchSettings

SECRET = "bench-secret-that-is-long-enough-for-hs256"
USER = "bench-user"
_PAUSE_BETWEEN_TURNS = 0.15
"""Between two turns of one session: lets the previous turn release the session (else 409)."""


@dataclass
class Context:
    settings: BenchSettings
    meters: Meters
    mock: Launched
    mock_port: int
    redis: Redis
    dsn: str
    store: SessionStore
    pg_statements: bool
    results: dict[str, Any]

    @property
    def mock_base_url(self) -> str:
        return f"http://127.0.0.1:{self.mock_port}/v1"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


async def wait_until_idle(pattern: str = r"\.ci/run|pytest", limit_seconds: float = 7200) -> None:
    """Benchmarks share the machine with CI: wait until no CI run or test suite is running."""
    deadline = time.monotonic() + limit_seconds
    announced = False
    while busy := busy_processes(pattern):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the machine stayed busy for {limit_seconds:g}s: {busy[:3]}")
        if not announced:
            log(f"waiting for {len(busy)} CI/test process(es) to finish: {busy[0]}")
            announced = True
        await asyncio.sleep(15)


def _warm(_: int) -> int:
    import bench.loadgen  # noqa: F401  (imported once per load process, before anything is timed)

    time.sleep(0.3)
    return os.getpid()


async def run(settings: BenchSettings) -> dict[str, Any]:
    if settings.wait_for_idle:
        await wait_until_idle()
    results: dict[str, Any] = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.__dict__.items()},
        "sweep": {},
        "history": {},
        "replay": {},
        "notes": [],
    }
    log(f"database {settings.database_name} (re)created; Redis {settings.redis_url} flushed")
    dsn = await stores.recreate_database(settings.admin_database_url, settings.database_name)
    pg_problem = await stores.enable_pg_stat_statements(settings.admin_database_url, dsn)
    results["postgres_statements"] = "pg_stat_statements" if pg_problem is None else f"unavailable: {pg_problem}"
    redis = Redis.from_url(settings.redis_url)
    await redis.flushdb()
    data_dir = await stores.pg_data_directory(settings.admin_database_url)
    redis_pid = await stores.redis_server_pid(redis)
    cores = os.cpu_count() or 1
    mock_port = free_port()
    mock_args = [
        sys.executable,
        "-c",
        f"from backend.devtools.mock_llm import run; run('127.0.0.1', {mock_port}, default_tokens={settings.tokens}, "
        f"default_delay_ms={settings.delay_ms}, log_level='warning')",
    ]
    ctx_pool = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=cores, mp_context=ctx_pool) as pool:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(pool, _warm, i) for i in range(cores)))
        async with (
            launched(
                "mock",
                mock_args,
                env=_clean_env() | {"PYTHONPATH": str(ROOT)},
                ready_url=f"http://127.0.0.1:{mock_port}/v1/models",
                log_dir=settings.work_dir / "logs",
            ) as mock,
            stores.session_store(dsn, redis) as store,
        ):
            meters = Meters(
                mock=mock.tree,
                redis_server=lambda: pid_tree(redis_pid),
                postgres=lambda: postgres_tree(data_dir),
                redis=redis,
                pool=pool,
                cores=cores,
            )
            ctx = Context(settings, meters, mock, mock_port, redis, dsn, store, pg_problem is None, results)
            if settings.wants("floor"):
                await floor_phase(ctx)
            if settings.wants("relay"):
                await relay_phase(ctx)
            for workers in settings.service_workers:
                if settings.wants(f"service-{workers}w"):
                    await service_phase(ctx, workers)
            if settings.overload_streams and settings.wants("service-1w-capped"):
                await overload_phase(ctx)
            if settings.wants("service-follower"):
                await follower_phase(ctx)
            if settings.litellm and settings.wants("litellm"):
                await litellm_phase(ctx)
    await redis.aclose()
    return results


def _clean_env() -> dict[str, str]:
    """This environment without anything that would configure the service or a peer behind our back."""
    prefixes = ("COPILOT_", "OPENAI_", "LANGFUSE_", "POSTHOG_", "LITELLM_")
    skip = {"DATABASE_URL", "REDIS_URL"}
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes) and k not in skip}


# --- bodies and sweeps ---------------------------------------------------------------------------------------


def marker(tokens: int, delay_ms: float | None = None) -> str:
    delay = "" if delay_ms is None else f" delay_ms={delay_ms:g}"
    return f"[[mock:text tokens={tokens}{delay}]]"


def openai_body(messages: Sequence[dict[str, str]]) -> bytes:
    return orjson.dumps({"model": "mock-model", "messages": list(messages), "stream": True})


def service_body(text: str) -> bytes:
    return orjson.dumps({"message": text})


def _processes(ctx: Context, n: int) -> int:
    return 1 if n < 100 else ctx.meters.cores


def _rounds(settings: BenchSettings, n: int) -> int:
    """Streams per user: enough samples at small N; two rounds (a steady period with N open) up to 100; one
    round from 500 on, where an overloaded target stretches every stream and keeps N open anyway."""
    if n == 1:
        return settings.min_samples
    return 1 if n >= 500 else max(2, math.ceil(settings.min_samples / n))


def _timeout(settings: BenchSettings, tokens: int, delay_ms: float) -> float:
    """Generous: an overloaded target is measured as slow, not cut off by the client."""
    return max(120.0, 30 * tokens * delay_ms / 1000)


async def sweep(
    ctx: Context, endpoint: Endpoint, body: bytes, paths: Callable[[int, int], Awaitable[list[str]]]
) -> dict[str, Any]:
    """The endpoint at every N of the settings; `paths(n, rounds)` gives each stream's request path."""
    s = ctx.settings
    out: dict[str, Any] = {}
    before = cpu_snapshot(endpoint.tree())
    await asyncio.sleep(s.idle_seconds)
    idle = cpu_delta(before, cpu_snapshot(endpoint.tree())) / s.idle_seconds
    ctx.results.setdefault("idle_cpu_cores", {})[endpoint.name] = round(idle, 4)
    await measure(  # warm-up: connection pools, first-request imports
        endpoint,
        ctx.meters,
        load_spec(
            endpoint,
            paths=await paths(4, 1),
            body=body,
            rounds=1,
            ramp_seconds=0,
            timeout_seconds=60,
            expected_tokens=None,
        ),
    )
    for n in s.streams:
        rounds = _rounds(s, n)
        spec = load_spec(
            endpoint,
            paths=await paths(n, rounds),
            body=body,
            rounds=rounds,
            ramp_seconds=0 if n == 1 else s.stream_seconds,
            timeout_seconds=_timeout(s, s.tokens, s.delay_ms),
            expected_tokens=s.tokens,
        )
        m = await measure(endpoint, ctx.meters, spec, processes=_processes(ctx, n))
        out[str(n)] = m.as_dict()
        log(_line(m))
        await asyncio.sleep(s.settle_seconds)
    return out


def _line(m: Measurement) -> str:
    cpu = m.cpu_ms_per_1k_tokens("target")
    return (
        f"{m.target:<11} N={m.concurrency:<5} streams={m.streams:<5} errors={m.errors:<4} "
        f"TTFT p50={m.ttft_ms['p50']} p99={m.ttft_ms['p99']} ms  gap p99={m.gap_ms['p99']} ms  "
        f"end after finish p50={m.end_after_finish_ms['p50']} p99={m.end_after_finish_ms['p99']} ms  "
        f"{m.tokens_per_second:.0f} tok/s  cpu={cpu and round(cpu, 1)} ms/1k tok  peak open={m.peak_open_streams}"
        + (f"  [{m.error_samples[0]}]" if m.error_samples else "")
    )


# --- the floor -----------------------------------------------------------------------------------------------


async def floor_phase(ctx: Context) -> None:
    s = ctx.settings
    endpoint = Endpoint("floor", "openai", ctx.mock_port, (("Authorization", "Bearer bench"),), ctx.mock.tree)
    log("floor: the mock called directly")

    async def paths(n: int, rounds: int) -> list[str]:
        return ["/v1/chat/completions"] * (n * rounds)

    ctx.results["sweep"]["floor"] = await sweep(ctx, endpoint, openai_body([_user(marker(s.tokens))]), paths)
    for size in s.history_sizes:
        messages = [*stores.history_prompt(size, s.max_live_messages), _user(marker(s.history_tokens))]
        m = await _sequential(ctx, endpoint, ["/v1/chat/completions"], openai_body(messages), s.history_tokens)
        ctx.results["history"].setdefault("floor", {})[str(size)] = m.as_dict()
        log(f"floor history {size}: TTFT p50={m.ttft_ms['p50']} p99={m.ttft_ms['p99']} ms")
    ctx.results["replay"]["floor"] = await _replay_generated(ctx, endpoint)


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


async def _sequential(
    ctx: Context,
    endpoint: Endpoint,
    paths: list[str],
    body: bytes,
    tokens: int,
    *,
    turns: int | None = None,
    warmup: int | None = None,
) -> Measurement:
    """`warmup` unmeasured streams, then `turns` measured ones, one after another, going through `paths` in
    order (and round again if there are fewer)."""
    turns = turns or ctx.settings.history_turns
    warmup = ctx.settings.history_warmup if warmup is None else warmup
    timeout = _timeout(ctx.settings, tokens, ctx.settings.delay_ms)
    sequence = [paths[i % len(paths)] for i in range(warmup + turns)]
    for part, measured in ((sequence[:warmup], False), (sequence[warmup:], True)):
        count = len(part)
        if not count:
            continue
        spec = load_spec(
            endpoint,
            paths=part,
            body=body,
            rounds=count,
            ramp_seconds=0,
            timeout_seconds=timeout,
            expected_tokens=tokens,
            pause_seconds=_PAUSE_BETWEEN_TURNS,
        )
        m = await measure(endpoint, ctx.meters, spec)
        if measured:
            return m
    raise AssertionError("unreachable")


async def _replay_generated(ctx: Context, endpoint: Endpoint) -> dict[str, Any]:
    """A reply of `replay_chunks` tokens with no pause between them, streamed through `endpoint`."""
    chunks = ctx.settings.replay_chunks
    body = openai_body([_user(marker(chunks, delay_ms=0))])
    rounds = ctx.settings.replay_rounds
    m = await _sequential(ctx, endpoint, ["/v1/chat/completions"], body, chunks, turns=rounds, warmup=rounds // 3)
    log(f"{endpoint.name}: a {chunks}-chunk reply in {m.total_ms['p50']} ms (p50 of {rounds})")
    return {"what": f"a freshly generated {chunks}-token reply, no pause between tokens", **m.as_dict()}


# --- the service ---------------------------------------------------------------------------------------------


def _bearer() -> str:
    return jwt.encode({"sub": USER, "exp": int(time.time()) + 6 * 3600}, SECRET, "HS256")


def _server_args(server: str, port: int, workers: int) -> list[str]:
    """The ASGI server's command line: uvicorn (what `copilot serve` runs) or granian (`--server granian`, a lever
    measured for issue 17: its HTTP layer is Rust)."""
    common = ["--factory", "backend.app:create_app", "--host", "127.0.0.1", "--port", str(port)]
    common += ["--workers", str(workers), "--log-level", "warning"]
    if server == "granian":
        return [str(Path(sys.executable).parent / "granian"), "--interface", "asgi", "--loop", "uvloop", *common]
    return [sys.executable, "-m", "uvicorn", *common, "--no-access-log"]


def _service_env(ctx: Context, *, cap: int = 0) -> dict[str, str]:
    s = ctx.settings
    env = (
        _clean_env()
        | {
            "DATABASE_URL": ctx.dsn,
            "REDIS_URL": s.redis_url,
            "OPENAI_BASE_URL": ctx.mock_base_url,
            "OPENAI_API_KEY": "bench",
            "COPILOT_MODEL": "mock-model",
            "COPILOT_JWT_SECRET": SECRET,
            "COPILOT_LOG_LEVEL": "WARNING",
            "COPILOT_CONTEXT_MAX_LIVE_MESSAGES": str(s.max_live_messages),
            # One bench user runs hundreds of turns at once: the per-user abuse limits would refuse most of them.
            "COPILOT_RATE_LIMIT_REQUESTS_PER_MINUTE": "0",
            "COPILOT_RATE_LIMIT_CONCURRENT_TURNS": "0",
            "COPILOT_RATE_LIMIT_TOKENS_PER_DAY": "0",
            # The sweep measures a pod sharing its CPU among every stream offered; `overload_phase` the cap.
            "COPILOT_MAX_CONCURRENT_TURNS": str(cap),
            "PYTHONPATH": str(ROOT),
        }
        | dict(s.service_env)
    )
    return env


async def service_phase(ctx: Context, workers: int) -> None:
    s = ctx.settings
    name = f"service-{workers}w"
    port = free_port()
    env = _service_env(ctx)
    args = _server_args(s.server, port, workers)
    log(f"{name}: {s.server} with {workers} worker(s) on Postgres {s.database_name} and Redis {s.redis_url}")
    storage_session = None
    async with launched(
        name, args, env=env, ready_url=f"http://127.0.0.1:{port}/health/ready", log_dir=s.work_dir / "logs"
    ) as svc:
        endpoint = Endpoint(name, "ui", port, (("Authorization", f"Bearer {_bearer()}"),), svc.tree, True)

        async def paths(n: int, rounds: int) -> list[str]:
            sessions = await stores.create_sessions(ctx.store, USER, n * rounds)
            return [f"/api/chat/sessions/{sid}/stream" for sid in sessions]

        ctx.results["sweep"][name] = await sweep(ctx, endpoint, service_body(marker(s.tokens)), paths)
        if workers != 1:
            return
        for size in s.history_sizes:
            # One session per turn, each holding exactly `size` messages with a warm cache: no turn sees the
            # messages an earlier one added.
            count = s.history_warmup + s.history_turns
            sessions = await stores.sessions_with_history(ctx.store, USER, count, size, s.max_live_messages)
            await stores.settle(ctx.dsn)
            session_paths = [f"/api/chat/sessions/{sid}/stream" for sid in sessions]
            body = service_body(marker(s.history_tokens))
            m = await _sequential(ctx, endpoint, session_paths, body, s.history_tokens)
            ctx.results["history"].setdefault(name, {})[str(size)] = m.as_dict()
            log(f"{name} history {size}: TTFT p50={m.ttft_ms['p50']} p99={m.ttft_ms['p99']} ms")
            if s.profile and size == max(s.history_sizes):
                ctx.results["profile_history"] = await _profile_history(ctx, endpoint, svc, size)
        if s.profile:
            ctx.results["profile"] = await _profile(ctx, endpoint, svc, paths)
        if s.storage_turns:
            storage_session = (await stores.create_sessions(ctx.store, USER, 1))[0]
        quiet_since = time.monotonic()
        ctx.results["replay"][name] = await _replay_stored(ctx, endpoint)
        if storage_session is not None:
            before = await _storage_turns(ctx, endpoint, storage_session, quiet_since)
    if storage_session is not None:
        await asyncio.sleep(1.0)  # the service's connections closed: their counters are in
        after = await stores.pg_counters(s.admin_database_url, s.database_name, statements=ctx.pg_statements)
        ctx.results["storage"] = _storage_report(ctx, before, after)


async def _replay_stored(ctx: Context, endpoint: Endpoint) -> dict[str, Any]:
    chunks = ctx.settings.replay_chunks
    turn_id = await stores.publish_finished_turn(ctx.redis, USER, chunks)
    path = f"/api/chat/tasks/{turn_id}/stream"
    spec = load_spec(
        endpoint,
        paths=[path] * ctx.settings.replay_rounds,
        body=b"",
        rounds=ctx.settings.replay_rounds,
        ramp_seconds=0,
        timeout_seconds=120,
        expected_tokens=chunks,
        method="GET",
    )
    m = await measure(endpoint, ctx.meters, spec)
    log(f"{endpoint.name}: replay of a finished {chunks}-chunk turn in {m.total_ms['p50']} ms")
    return {"what": f"replay of a finished {chunks}-chunk turn (GET /api/chat/tasks/{{id}}/stream)", **m.as_dict()}


async def _storage_turns(
    ctx: Context, endpoint: Endpoint, session_id: Any, quiet_since: float
) -> tuple[stores.PgCounters, stores.RedisCounters, Measurement]:
    """Sequential one-step turns on one session, after Postgres' counters of earlier work have been reported
    (an idle backend reports within 10 s)."""
    s = ctx.settings
    # The wait doubles as a measure of what Redis serves with no turn running (the pods' background loops, this
    # harness' INFO calls), to tell the turns' own round trips from the server-wide count.
    idle_before, idle_started = await stores.redis_counters(ctx.redis), time.monotonic()
    await asyncio.sleep(max(3.0, 11.0 - (time.monotonic() - quiet_since)))
    pg_before = await stores.pg_counters(s.admin_database_url, s.database_name, statements=ctx.pg_statements)
    redis_before = await stores.redis_counters(ctx.redis)
    idle_reads_per_second = redis_before.minus(idle_before).reads / (time.monotonic() - idle_started)
    path = f"/api/chat/sessions/{session_id}/stream"
    started = time.monotonic()
    m = await _sequential(
        ctx, endpoint, [path], service_body(marker(s.history_tokens)), s.history_tokens, turns=s.storage_turns, warmup=0
    )
    redis_delta = (await stores.redis_counters(ctx.redis)).minus(redis_before)
    background = idle_reads_per_second * (time.monotonic() - started)
    redis_delta = replace(redis_delta, background_reads=background)
    log(f"storage: {m.streams} sequential turns, {m.errors} errors")
    return pg_before, redis_delta, m


def _storage_report(
    ctx: Context,
    before: tuple[stores.PgCounters, stores.RedisCounters, Measurement],
    after: stores.PgCounters,
) -> dict[str, Any]:
    pg_before, redis_delta, m = before
    d = after.minus(pg_before)
    turns = max(1, m.streams)
    report: dict[str, Any] = {
        "turns": m.streams,
        "errors": m.errors,
        "steps_per_turn": 1,
        "source": "pg_stat_statements" if d.statements is not None else "pg_stat_database + pg_stat_user_tables",
        "transactions_per_turn": round((d.xact_commit + d.xact_rollback) / turns, 2),
        "rows_inserted_per_turn": round(d.rows_inserted / turns, 2),
        "rows_updated_per_turn": round(d.rows_updated / turns, 2),
        "table_scans_per_turn": round(d.scans / turns, 2),
        "redis_commands_per_turn": round(redis_delta.commands / turns, 2),
        "redis_round_trips_per_turn": round(redis_delta.reads / turns, 2),
        "redis_background_round_trips_per_turn": round(redis_delta.background_reads / turns, 2),
        "redis_own_round_trips_per_turn": round((redis_delta.reads - redis_delta.background_reads) / turns, 2),
        "redis_per_command_per_turn": {k: round(v / turns, 2) for k, v in sorted(redis_delta.per_command.items())},
    }
    if d.statements is not None:
        report["statements_per_turn"] = round(sum(d.statements.values()) / turns, 2)
        report["statements"] = {q[:160]: round(n / turns, 2) for q, n in d.statements.items()}
    log(f"storage: {report['transactions_per_turn']} Postgres transactions per one-step turn")
    return report


async def _profile(
    ctx: Context, endpoint: Endpoint, svc: Launched, paths: Callable[[int, int], Awaitable[list[str]]]
) -> dict[str, Any]:
    """py-spy samples the service's worker while `profile_streams` streams run."""
    s = ctx.settings
    n = s.profile_streams
    rounds = max(1, math.ceil(s.profile_seconds / s.stream_seconds) - 1)
    log(f"profile: py-spy on pid {svc.process.pid} during {n} streams x {rounds} rounds")
    spec = load_spec(
        endpoint,
        paths=await paths(n, rounds),
        body=service_body(marker(s.tokens)),
        rounds=rounds,
        ramp_seconds=s.stream_seconds,
        timeout_seconds=_timeout(s, s.tokens, s.delay_ms),
        expected_tokens=s.tokens,
    )
    out = s.work_dir / "profile-streams.txt"
    try:
        async with profile.record(svc.process.pid, out):
            m = await measure(endpoint, ctx.meters, spec, processes=_processes(ctx, n))
    except profile.ProfileError as e:
        return {"error": str(e)}
    return {"measurement": m.as_dict(), "raw_file": str(out.relative_to(ROOT)), **profile.analyse(out)}


async def _profile_history(ctx: Context, endpoint: Endpoint, svc: Launched, size: int) -> dict[str, Any]:
    """py-spy samples the service during sequential turns on sessions of `size` messages."""
    s = ctx.settings
    out = s.work_dir / "profile-history.txt"
    turns = min(10, s.history_turns)
    sessions = await stores.sessions_with_history(ctx.store, USER, turns, size, s.max_live_messages)
    await stores.settle(ctx.dsn)
    paths = [f"/api/chat/sessions/{sid}/stream" for sid in sessions]
    log(f"profile: py-spy on pid {svc.process.pid} during {turns} turns with {size} messages of history")
    try:
        async with profile.record(svc.process.pid, out):
            body = service_body(marker(s.history_tokens))
            m = await _sequential(ctx, endpoint, paths, body, s.history_tokens, turns=turns, warmup=0)
    except profile.ProfileError as e:
        return {"error": str(e)}
    return {
        "history_messages": size,
        "measurement": m.as_dict(),
        "raw_file": str(out.relative_to(ROOT)),
        **profile.analyse(out),
    }


# --- LiteLLM -------------------------------------------------------------------------------------------------


async def relay_phase(ctx: Context) -> None:
    """The bare relay of `bench/relay.py` in front of the mock: the sweep only (CPU per token is its point)."""
    s = ctx.settings
    port = free_port()
    args = [sys.executable, "-m", "bench.relay", "--port", str(port), "--upstream-port", str(ctx.mock_port)]
    log("relay: a bare asyncio relay in front of the mock (the floor of relaying one token at a time in Python)")
    async with launched(
        "relay",
        args,
        env=_clean_env() | {"PYTHONPATH": str(ROOT)},
        ready_url=f"http://127.0.0.1:{port}/ready",
        log_dir=s.work_dir / "logs",
    ) as relay:
        endpoint = Endpoint("relay", "openai", port, (), relay.tree)

        async def paths(n: int, rounds: int) -> list[str]:
            return ["/v1/chat/completions"] * (n * rounds)

        ctx.results["sweep"]["relay"] = await sweep(ctx, endpoint, openai_body([_user(marker(s.tokens))]), paths)


async def overload_phase(ctx: Context) -> None:
    """One worker capped at each of `overload_caps` running turns, offered `overload_streams` at once (one round):
    the turns past the cap must be refused (503 `overloaded`) and the admitted ones keep their pace."""
    for cap in ctx.settings.overload_caps:
        await _overload_at(ctx, cap)


async def _overload_at(ctx: Context, cap: int) -> None:
    s = ctx.settings
    name, n = "service-1w-capped", s.overload_streams
    port = free_port()
    log(f"{name}: {s.server} with 1 worker, COPILOT_MAX_CONCURRENT_TURNS={cap}, offered {n} streams")
    async with launched(
        name,
        _server_args(s.server, port, 1),
        env=_service_env(ctx, cap=cap),
        ready_url=f"http://127.0.0.1:{port}/health/ready",
        log_dir=s.work_dir / "logs",
    ) as svc:
        endpoint = Endpoint(name, "ui", port, (("Authorization", f"Bearer {_bearer()}"),), svc.tree, True)
        sessions = await stores.create_sessions(ctx.store, USER, n)
        spec = load_spec(
            endpoint,
            paths=[f"/api/chat/sessions/{sid}/stream" for sid in sessions],
            body=service_body(marker(s.tokens)),
            rounds=1,
            ramp_seconds=s.stream_seconds,
            timeout_seconds=_timeout(s, s.tokens, s.delay_ms),
            expected_tokens=s.tokens,
        )
        m = await measure(endpoint, ctx.meters, spec, processes=_processes(ctx, n))
    shed = m.overloaded
    report = {"offered": n, "cap": cap, "admitted": m.streams - m.errors, "shed": shed, **m.as_dict()}
    ctx.results.setdefault("overload", []).append(report)
    log(_line(m))
    log(f"{name}: {report['admitted']} admitted, {shed} shed with 503 overloaded, {m.errors - shed} other errors")


async def follower_phase(ctx: Context) -> None:
    """Two pods (one worker each) on the same Postgres and Redis: every reply is started on the first and, once its
    response names the task, also read from the second, as a browser that reconnected through a balancer would. The
    end of the response after `finish`, on the owner's pod and on the follower's, at 1 and 100 streams."""
    s = ctx.settings
    ports = [free_port(), free_port()]
    name = "service-follower"
    log(f"{name}: two {s.server} pods with 1 worker each; every reply also followed from the other pod")
    async with contextlib.AsyncExitStack() as stack:
        pods = [
            await stack.enter_async_context(
                launched(
                    f"{name}-{i + 1}",
                    _server_args(s.server, port, 1),
                    env=_service_env(ctx),
                    ready_url=f"http://127.0.0.1:{port}/health/ready",
                    log_dir=s.work_dir / "logs",
                )
            )
            for i, port in enumerate(ports)
        ]
        tree = lambda: [p for pod in pods for p in pod.tree()]  # noqa: E731
        endpoint = Endpoint(name, "ui", ports[0], (("Authorization", f"Bearer {_bearer()}"),), tree, True)
        for n in (1, 100):
            rounds = _rounds(s, n)
            sessions = await stores.create_sessions(ctx.store, USER, n * rounds)
            spec = load_spec(
                endpoint,
                paths=[f"/api/chat/sessions/{sid}/stream" for sid in sessions],
                body=service_body(marker(s.tokens)),
                rounds=rounds,
                ramp_seconds=0 if n == 1 else s.stream_seconds,
                timeout_seconds=_timeout(s, s.tokens, s.delay_ms),
                expected_tokens=s.tokens,
                follow_port=ports[1],
            )
            m = await measure(endpoint, ctx.meters, spec, processes=_processes(ctx, n))
            ctx.results.setdefault("followers", []).append({"n": n, **m.as_dict()})
            owner, follower = m.end_after_finish_ms, m.follower_end_after_finish_ms
            log(
                f"{name} N={n}: end after finish, owner p50={owner['p50']} p99={owner['p99']} ms, follower "
                f"p50={follower.get('p50')} p99={follower.get('p99')} ms; errors {m.errors} / {m.follower_errors}; "
                f"first token on the follower after the owner p50={m.follower_first_token_lag_ms.get('p50')} "
                f"p99={m.follower_first_token_lag_ms.get('p99')} ms"
            )
            await asyncio.sleep(s.settle_seconds)


async def litellm_phase(ctx: Context) -> None:
    s = ctx.settings
    reason = litellm_peer.unavailable_reason(ROOT)
    if reason is not None:
        log(f"litellm: UNAVAILABLE: {reason}")
        ctx.results["litellm"] = {"available": False, "error": reason}
        return
    port = free_port()
    log(f"litellm: proxy ({s.litellm_workers} worker) streaming from the same mock")
    try:
        async with litellm_peer.litellm_proxy(ROOT, ctx.mock_base_url, port, workers=s.litellm_workers) as proc:
            ctx.results["litellm"] = {"available": True, "version": litellm_peer.version(ROOT)}
            headers = (("Authorization", f"Bearer {litellm_peer.MASTER_KEY}"),)
            endpoint = Endpoint("litellm", "openai", port, headers, proc.tree)

            async def paths(n: int, rounds: int) -> list[str]:
                return ["/v1/chat/completions"] * (n * rounds)

            body = openai_body([_user(marker(s.tokens))])
            ctx.results["sweep"]["litellm"] = await sweep(ctx, endpoint, body, paths)
            ctx.results["replay"]["litellm"] = await _replay_generated(ctx, endpoint)
    except StartError as e:
        log(f"litellm: could not start: {e}")
        ctx.results["litellm"] = {"available": False, "error": str(e)}
