"""PostgreSQL and Redis of the chaos suite's own: free loopback ports, a directory of their own, stoppable and
restartable, so a scenario can take them away without touching the shared servers other test runs use.

PostgreSQL comes from Debian's packaged binaries (`/usr/lib/postgresql/<version>/bin`). `initdb` refuses to run as
root, so as root every PostgreSQL command runs as the `postgres` OS user, who owns the data directory. Redis is a
child process (`--save '' --appendonly no`): a restart loses everything unless the scenario shuts it down with
`SHUTDOWN SAVE`, which writes one snapshot that the next start loads.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers import free_port

REDIS_SERVER = "redis-server"
_PG_ROOT = Path("/usr/lib/postgresql")


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's `bin` directory (None if there is none)."""
    found = [p / "bin" for p in _PG_ROOT.glob("*") if (p / "bin" / "initdb").exists() and p.name.isdigit()]
    return max(found, key=lambda p: int(p.parent.name)) if found else None


def missing_servers() -> str | None:
    """Why the own servers cannot run here (None when they can): the reason a chaos test is skipped with."""
    if postgres_bin() is None:
        return f"no PostgreSQL binaries under {_PG_ROOT} (apt-get install postgresql)"
    if shutil.which(REDIS_SERVER) is None:
        return "no redis-server on PATH (apt-get install redis-server)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a `postgres` OS user to run PostgreSQL as"
    return None


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class OwnPostgres:
    """A PostgreSQL cluster in `root/postgres`, listening on 127.0.0.1 only, trust auth, durability off (a test
    server: a stop is a clean shutdown, and nothing here needs to survive a machine crash)."""

    def __init__(self, root: Path, *, database: str = "copilot") -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise RuntimeError(missing_servers() or "no PostgreSQL")
        self.bin = bin_dir
        self.data = root / "postgres"
        self.port = free_port()
        self.database = database
        self.log = self.data / "server.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    def create(self) -> None:
        """initdb, start, and create the service's database."""
        self.data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.data, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", self.database)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off -c max_connections=200"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`fast`: clients are disconnected and the server shuts down cleanly; `immediate`: like a crash."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        status = subprocess.run(
            self._command("pg_ctl", "-D", str(self.data), "status"), capture_output=True, check=False
        )
        return status.returncode == 0

    def destroy(self) -> None:
        if self.data.exists() and self.running():
            self.stop("immediate")
        shutil.rmtree(self.data, ignore_errors=True)

    def _command(self, tool: str, *args: str) -> list[str]:
        command = [str(self.bin / tool), *args]
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(self._command(tool, *args), capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(
                f"{tool} failed ({done.returncode}): {done.stdout}{done.stderr}\n--- server log ---\n"
                + log_tail(self.log)
            )


class OwnRedis:
    """A redis-server on its own port and directory, without persistence."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "redis"
        self.dir.mkdir()
        self.port = free_port()
        self.log = self.dir / "server.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        # No retries: a `SHUTDOWN` closes the connection on purpose, and a probe of a stopped server must not wait.
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, retry=Retry(NoBackoff(), 0))

    def start(self, *, empty: bool = True) -> None:
        """Start the server; `empty=False` loads the snapshot of the last `stop(save=True)`."""
        if empty:
            (self.dir / "dump.rdb").unlink(missing_ok=True)
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.dir), "--logfile", str(self.log)]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self._process.returncode}:\n{log_tail(self.log)}")
            try:
                with self.client() as c:
                    if c.ping():
                        return
            except redis.exceptions.RedisError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer:\n{log_tail(self.log)}")
            time.sleep(0.05)

    def stop(self, *, save: bool) -> None:
        """`save=True`: `SHUTDOWN SAVE` (the next start gets the data back); else `SHUTDOWN NOSAVE` (it is gone)."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            with self.client() as c:
                c.shutdown(save=save, nosave=not save)
        except redis.exceptions.RedisError:
            process.kill()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash; whatever was in memory is gone."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
