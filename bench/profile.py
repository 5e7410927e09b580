"""Sampling a process with py-spy while a measurement runs, and reading the profile it writes (`--format raw`:
one `frame;frame;... count` line per distinct stack).

Three views, each as shares of all on-CPU samples:
- `attributed`: each sample is charged to the innermost frame of the service's own code (`backend/...`), so
  library time lands on the project function that asked for it (the answer to "which of our functions costs
  what"); samples with no project frame go to the library at the top of the stack (uvicorn, asyncio, ...).
- `inclusive`: every project function on the stack, counted once per sample.
- `self`: the innermost frame (where the interpreter was); `packages`: the same summed by top-level package
  (`asyncio` there is mostly uvloop's C code under `Runner.run`: polling, socket I/O, callbacks).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

PY_SPY = Path(sys.executable).parent / "py-spy"


class ProfileError(RuntimeError):
    pass


@asynccontextmanager
async def record(pid: int, out: Path, *, rate: int = 250) -> AsyncIterator[Path]:
    """py-spy samples `pid` (without pausing it) until the block ends; the raw profile is then at `out`."""
    if not PY_SPY.exists():
        raise ProfileError(f"py-spy is not installed at {PY_SPY} (scripts/bench.sh installs it)")
    proc = await asyncio.create_subprocess_exec(
        str(PY_SPY),
        "record",
        "--pid",
        str(pid),
        "--rate",
        str(rate),
        "--format",
        "raw",
        "--nonblocking",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(1.0)  # attached
    try:
        yield out
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        _, err = await proc.communicate()
    if not _written(out):
        raise ProfileError(f"py-spy wrote no profile: {err.decode(errors='replace')[-500:]}")


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^():]+?)(?::\d+)?\)$")


def _written(path: Path) -> bool:
    return path.exists() and path.stat().st_size > 0


def _frame(raw: str) -> tuple[str, str]:
    m = _FRAME.match(raw.strip())
    if not m:
        return raw.strip(), ""
    return m["func"], m["file"]


def _package(file: str) -> str:
    parts = file.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    return parts[0].removesuffix(".py") if parts else file


def _is_project(file: str) -> bool:
    return file.startswith("backend/") or "/backend/" in file


def _project_name(func: str, file: str) -> str:
    file = file[file.index("backend/") :] if "backend/" in file else file
    return f"{file}:{func}"


def analyse(path: Path, top: int = 20) -> dict[str, Any]:
    packages: Counter[str] = Counter()
    attributed: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    self_: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f[1]]  # process/thread labels have no file
        if not frames:
            continue
        total += count
        func, file = frames[-1]
        self_[f"{file}:{func}"] += count
        packages[_package(file)] += count
        owner = None
        for func, file in reversed(frames):
            if _is_project(file):
                owner = _project_name(func, file)
                break
        attributed[owner or f"[no project frame] {_package(frames[-1][1])}"] += count
        for name in {_project_name(f, p) for f, p in frames if _is_project(p)}:
            inclusive[name] += count

    def shares(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"where": k, "share": round(v / total, 4), "samples": v} for k, v in counter.most_common(top)]

    return {
        "samples": total,
        "attributed": shares(attributed),
        "inclusive": shares(inclusive),
        "self": shares(self_),
        "packages": shares(packages),
    }
