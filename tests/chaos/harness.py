"""The chaos rig: its own PostgreSQL and Redis, the mock model and two `copilot serve` processes ("pods").

Everything is a process of its own, started with `subprocess.Popen`, so one rig can serve a whole test module (or
a soak run) whatever event loop drives the clients, and a scenario can SIGKILL, SIGTERM or restart any part of it.
Blocking calls (starting, stopping) are meant to be run with `asyncio.to_thread` from inside a scenario.

The pods run with production defaults except where a default would only make a scenario slow: a 2 s turn lease
(the time a dead pod's turns take to be closed), a 2 s model idle timeout, fast model retries and a short
shutdown grace. The SSE heartbeat keeps its 15 s default on purpose: a stream that only ends at a heartbeat tick
must show up as late.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import httpx
import jwt
import redis

from tests.chaos.servers import OwnPostgres, OwnRedis, log_tail
from tests.helpers import free_port

POD_ENV: Mapping[str, str] = MappingProxyType(
    {
        "COPILOT_MODEL": "mock-model",
        "OPENAI_API_KEY": "test",
        "COPILOT_TURN_LEASE_SECONDS": "2",
        "COPILOT_LLM_IDLE_TIMEOUT_SECONDS": "2",
        "COPILOT_LLM_RETRY_BASE_SECONDS": "0.05",
        "COPILOT_LLM_RETRY_MAX_SECONDS": "0.2",
        # Read by the graceful shutdown (SIGTERM: stop running turns after this grace); ignored by a build without it.
        "COPILOT_SHUTDOWN_GRACE_SECONDS": "5",
        "COPILOT_MIGRATE_ON_STARTUP": "true",
        "COPILOT_LOG_LEVEL": "WARNING",
    }
)
"""What every pod runs with, besides the URLs and the JWT secret of its rig."""


class StartError(RuntimeError):
    """A process exited or did not become ready; the message ends with the tail of its log."""


@dataclass
class Process:
    """One child process with its log file, ready once `ready_url` answers 200."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    ready_url: str
    popen: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 60) -> None:
        # Run from the rig's directory: a developer's `.env` in the repository must not configure a pod.
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(
                self.args,
                cwd=self.log_path.parent,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2) as client:
            while True:
                if self.popen.poll() is not None:
                    raise StartError(f"{self.name} exited with {self.popen.returncode}:\n{log_tail(self.log_path)}")
                if _answers(client, self.ready_url):
                    return
                if time.monotonic() > deadline:
                    raise StartError(f"{self.name} not ready after {timeout:g}s:\n{log_tail(self.log_path)}")
                time.sleep(0.1)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def signal(self, sig: signal.Signals) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after `timeout` seconds."""
        assert self.popen is not None
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> None:
        """SIGKILL and reap (the rig's own teardown: nothing to drain)."""
        if self.popen is not None:
            if self.popen.poll() is None:
                self.popen.kill()
            self.popen.wait()


@dataclass
class Pod:
    """A `copilot serve` process; `index` is its place in the rig (a restart keeps the place, not the port)."""

    index: int
    process: Process
    url: str

    @property
    def name(self) -> str:
        return self.process.name


@dataclass
class Rig:
    """Own PostgreSQL and Redis, the mock model and `pod_count` pods. Use `with Rig.started() as rig`."""

    root: Path
    pod_count: int = 2
    pod_env: Mapping[str, str] = field(default_factory=dict)
    """Overrides of `POD_ENV` (for instance a soak's longer lease)."""
    postgres: OwnPostgres = field(init=False)
    redis: OwnRedis = field(init=False)
    mock: Process = field(init=False)
    pods: list[Pod] = field(default_factory=list)
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @classmethod
    def started(cls, *, pod_count: int = 2, pod_env: Mapping[str, str] | None = None) -> Rig:
        root = Path(tempfile.mkdtemp(prefix="copilot-chaos-"))
        root.chmod(0o755)  # the `postgres` user must reach its data directory inside
        rig = cls(root, pod_count=pod_count, pod_env=dict(pod_env or {}))
        try:
            rig._start()
        except BaseException:
            rig.close()
            raise
        return rig

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        self.postgres = OwnPostgres(self.root)
        self.redis = OwnRedis(self.root)
        self.postgres.create()
        self.redis.start()
        port = free_port()
        self.mock = Process(
            "mock-llm",
            [sys.executable, "-m", "backend.cli", "mock-llm", "--port", str(port)],
            _base_env(),
            self.root / "mock-llm.log",
            f"http://127.0.0.1:{port}/v1/models",
        )
        self.mock.start()
        self.pods = [self._new_pod(i) for i in range(self.pod_count)]
        self.pods[0].process.start()  # the first one migrates the database; the others find it done
        for pod in self.pods[1:]:
            pod.process.start()

    @property
    def llm_base_url(self) -> str:
        return self.mock.ready_url.removesuffix("/models")

    def _new_pod(self, index: int) -> Pod:
        port = free_port()
        env = {
            **_base_env(),
            **POD_ENV,
            **self.pod_env,
            "DATABASE_URL": self.postgres.dsn,
            "REDIS_URL": self.redis.url,
            "OPENAI_BASE_URL": self.llm_base_url,
            "COPILOT_JWT_SECRET": self.jwt_secret,
        }
        name = f"pod-{'abcdefgh'[index]}"
        process = Process(
            name,
            [sys.executable, "-m", "backend.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env,
            self.root / f"{name}.log",
            f"http://127.0.0.1:{port}/health/ready",
        )
        return Pod(index, process, f"http://127.0.0.1:{port}")

    def restart_pod(self, index: int) -> Pod:
        """A fresh process in place `index` (after a kill or a SIGTERM); waits until it is ready."""
        self.pods[index].process.stop()
        pod = self._new_pod(index)
        pod.process.start()
        self.pods[index] = pod
        return pod

    def ensure_up(self) -> None:
        """Bring back whatever an earlier scenario left down (a failed scenario must not break the next one)."""
        if not self.postgres.running():
            self.postgres.start()
        if not self.redis_alive():
            self.redis.start(empty=False)
        for pod in list(self.pods):
            if not pod.process.alive:
                self.restart_pod(pod.index)
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=2) as client:
            for pod in self.pods:
                while not _answers(client, pod.process.ready_url):
                    if time.monotonic() > deadline:
                        raise StartError(f"{pod.name} is not ready:\n{log_tail(pod.process.log_path)}")
                    time.sleep(0.1)

    def redis_alive(self) -> bool:
        try:
            with self.redis.client() as c:
                return bool(c.ping())
        except (redis.exceptions.RedisError, OSError):
            return False

    def token(self, user_id: str) -> str:
        now = int(time.time())
        return jwt.encode({"sub": user_id, "iat": now, "exp": now + 86_400}, self.jwt_secret, algorithm="HS256")

    def logs(self, chars: int = 4000) -> str:
        """The tail of every pod's log (printed when a scenario fails)."""
        parts = []
        for path in sorted(self.root.glob("pod-*.log")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for pod in self.pods:
            pod.process.stop()
        if hasattr(self, "mock"):
            self.mock.stop()
        if hasattr(self, "redis"):
            self.redis.destroy()
        if hasattr(self, "postgres"):
            self.postgres.destroy()
        for path in self.root.glob("*"):
            if path.is_file():
                path.unlink()
        self.root.rmdir()


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code == 200
    except httpx.HTTPError:
        return False


def _base_env() -> dict[str, str]:
    """This process's environment without the service's own settings (a developer's .env must not leak in)."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("COPILOT_", "OPENAI_", "LANGFUSE_", "POSTHOG_")) and k not in ("DATABASE_URL", "REDIS_URL")
    }
