"""`python -m bench`: run the benchmark, print the tables, write the JSON results, the plot and the docs tables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench import report
from bench.run import run
from bench.settings import ROOT, BenchSettings


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--quick",
        action="store_true",
        help="N in (1, 10, 100), 20-token replies, histories of 10 and 1,000: under two minutes",
    )
    p.add_argument("--streams", type=_ints, help="concurrent streams of the sweep, e.g. 1,10,100")
    p.add_argument("--tokens", type=int, help="tokens per reply in the sweep")
    p.add_argument("--delay-ms", type=float, help="pause between tokens (50 ms = 20 tokens/s)")
    p.add_argument("--history", type=_ints, help="history sizes, e.g. 10,100,1000,5000")
    p.add_argument(
        "--max-live-messages",
        type=int,
        help="the service's bound on live messages (default 400; 0: none, every history message stays live)",
    )
    p.add_argument(
        "--targets",
        help="only these targets: floor,relay,service-1w,service-2w,service-1w-capped,service-follower,litellm",
    )
    p.add_argument("--no-litellm", action="store_true", help="leave LiteLLM out")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None, help="py-spy the service")
    p.add_argument("--profile-streams", type=int, help="concurrent streams while py-spy samples the service")
    p.add_argument("--overload-streams", type=int, help="streams offered at once to the capped worker (0: skip)")
    p.add_argument("--overload-caps", type=_ints, help="caps (COPILOT_MAX_CONCURRENT_TURNS) to offer them to: 100,200")
    p.add_argument(
        "--server",
        choices=("uvicorn", "granian"),
        help="the service's ASGI server (default uvicorn, as `copilot serve`; granian must be installed)",
    )
    p.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the service (repeatable), e.g. COPILOT_PUBLISH_WINDOW_MS=500 to measure a lever",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for CI / test runs to finish first")
    p.add_argument("--out-dir", type=Path, help="where the JSON and PNG go (default docs/, .bench/quick/ for --quick)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite the generated block of docs/benchmarks.md")
    return p


def settings_from(args: argparse.Namespace) -> BenchSettings:
    overrides: dict[str, Any] = {}
    if args.streams:
        overrides["streams"] = args.streams
    if args.tokens:
        overrides["tokens"] = args.tokens
    if args.delay_ms is not None:
        overrides["delay_ms"] = args.delay_ms
    if args.history:
        overrides["history_sizes"] = args.history
    if args.max_live_messages is not None:
        overrides["max_live_messages"] = args.max_live_messages
    if args.targets:
        overrides["targets"] = tuple(t.strip() for t in args.targets.split(","))
    if args.no_litellm:
        overrides["litellm"] = False
    if args.profile is not None:
        overrides["profile"] = args.profile
    if args.profile_streams:
        overrides["profile_streams"] = args.profile_streams
    if args.no_wait:
        overrides["wait_for_idle"] = False
    if args.overload_streams is not None:
        overrides["overload_streams"] = args.overload_streams
    if args.overload_caps:
        overrides["overload_caps"] = args.overload_caps
    if args.server:
        overrides["server"] = args.server
    if args.service_env:
        pairs = [item.partition("=") for item in args.service_env]
        if any(not sep or not name for name, sep, _ in pairs):
            raise SystemExit("--service-env takes NAME=VALUE")
        overrides["service_env"] = tuple((name, value) for name, _, value in pairs)
    overrides["out_dir"] = args.out_dir or (ROOT / ".bench" / "quick" if args.quick else ROOT / "docs")
    return BenchSettings.quick_mode(**overrides) if args.quick else BenchSettings(**overrides)


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = psutil.virtual_memory().total / 2**30
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "summary": f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} {platform.release()}",
    }


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("fastapi", "starlette", "uvicorn", "uvloop", "redis", "hiredis", "asyncpg", "openai", "httpx"):
        with contextlib.suppress(PackageNotFoundError):
            out[name] = version(name)
    return out


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        return sha.strip() + ("+uncommitted changes" if dirty.strip() else "")
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = settings_from(args)
    started = time.time()
    results = asyncio.run(run(settings))
    m = machine()
    results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": ("python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)).strip(),
        "commit": _commit(),
        "machine": m["summary"],
        "machine_detail": m,
        "versions": _versions(),
    }
    out = settings.out_dir
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "benchmark-results.json", out / "benchmarks.png"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    report.print_tables(results)
    try:
        report.plot(results, png_path)
    except ImportError as e:
        print(f"\nno plot ({e}); scripts/bench.sh installs matplotlib", file=sys.stderr)
        png_path = None  # type: ignore[assignment]
    if not settings.quick and not args.no_docs and out == ROOT / "docs":
        report.update_docs(out / "benchmarks.md", report.markdown(results, png_path.name if png_path else None))
    print(f"\nresults: {json_path}" + (f", plot: {png_path}" if png_path else ""))
    print(f"took {results['meta']['duration_s']} s")
    return 0
