"""The processes a benchmark starts (mock model, service, LiteLLM) and what they cost: CPU and resident memory.

Every process is started on loopback with its output in a log file under `.bench/logs/`, waited for until a
readiness URL answers 200, and stopped with SIGTERM (SIGKILL after a grace period). CPU is counted over a
process tree (uvicorn's supervisor and its workers, Postgres' backends): a snapshot maps pid to CPU seconds, and
the difference of two snapshots also counts processes born in between.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

CpuSnapshot = dict[int, float]


class StartError(RuntimeError):
    """A process exited or never became ready; the message ends with the tail of its log."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Launched:
    name: str
    process: psutil.Process
    log_path: Path

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@asynccontextmanager
async def launched(
    name: str,
    args: Sequence[str],
    *,
    env: Mapping[str, str],
    ready_url: str,
    log_dir: Path,
    ready_timeout: float = 60.0,
) -> AsyncIterator[Launched]:
    """Run `args` until the block ends; `StartError` if it dies or `ready_url` does not answer 200 in time."""
    log_path = _log_file(log_dir, name)
    with log_path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(
            *args, env=dict(env), stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=asyncio.subprocess.STDOUT
        )
    try:
        await _wait_ready(proc, ready_url, ready_timeout, name, log_path)
        yield Launched(name, psutil.Process(proc.pid), log_path)
    finally:
        await _stop(proc)


def _log_file(log_dir: Path, name: str) -> Path:
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir / f"{name}.log"


async def _wait_ready(
    proc: asyncio.subprocess.Process, url: str, limit_seconds: float, name: str, log_path: Path
) -> None:
    deadline = time.monotonic() + limit_seconds
    async with httpx.AsyncClient(timeout=2.0) as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise StartError(f"{name} exited with code {proc.returncode}:\n{log_tail(log_path)}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise StartError(f"{name} was not ready at {url} after {limit_seconds:g}s:\n{log_tail(log_path)}")


async def _stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is not None:
        return
    children = []
    with suppress(psutil.NoSuchProcess):
        children = psutil.Process(proc.pid).children(recursive=True)
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        proc.kill()
        await proc.wait()
    for child in children:  # workers a killed supervisor left behind
        with suppress(psutil.NoSuchProcess):
            child.kill()


def cpu_snapshot(processes: Sequence[psutil.Process]) -> CpuSnapshot:
    snap: CpuSnapshot = {}
    for p in processes:
        try:
            t = p.cpu_times()
            snap[p.pid] = t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return snap


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """CPU seconds used between two snapshots by the processes alive at the second one."""
    return sum(max(0.0, t - before.get(pid, 0.0)) for pid, t in after.items())


def rss_bytes(processes: Sequence[psutil.Process]) -> int:
    total = 0
    for p in processes:
        with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += p.memory_info().rss
    return total


class RssPeak:
    """Samples the resident memory of a process tree every `interval` while running; keeps the peak."""

    def __init__(self, tree: Callable[[], list[psutil.Process]], interval: float = 0.2) -> None:
        self._tree = tree
        self._interval = interval
        self.baseline = rss_bytes(tree())
        self.peak = self.baseline
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RssPeak:
        self._task = asyncio.create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, rss_bytes(self._tree()))
            await asyncio.sleep(self._interval)


def postgres_tree(data_directory: str) -> list[psutil.Process]:
    """The postmaster and every backend of the local PostgreSQL (its pid is the first line of postmaster.pid)."""
    try:
        pid = int(Path(data_directory, "postmaster.pid").read_text().split()[0])
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except (OSError, ValueError, IndexError, psutil.Error):
        return []


def pid_tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def busy_processes(pattern: str, *, exclude: int | None = None) -> list[str]:
    """Command lines of other processes matching `pattern` (the lead's CI run, a test suite)."""
    rx = re.compile(pattern)
    me = {os.getpid(), exclude or -1}
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if p.info["pid"] not in me and rx.search(cmd):
            found.append(f"{p.info['pid']} {cmd[:120]}")
    return found
