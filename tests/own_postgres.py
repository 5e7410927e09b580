"""A PostgreSQL server of a test's own, to stop and start in the middle of the test (never the shared server).

Debian's binaries (`/usr/lib/postgresql/<version>/bin`), a data directory under the system's temporary directory,
a free port on 127.0.0.1 and its Unix socket in the data directory. Under root the server runs as `postgres` (it
refuses root). Durability is switched off: the tests need a server that goes away and comes back, not one that
survives a power cut, and fsyncs would only slow down a machine shared by several runs.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import pytest

from backend.store.migrate import upgrade_dsn
from tests.helpers import free_port

_SERVER_USER = "postgres"


def _bin_dir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


class OwnPostgres:
    """`async with OwnPostgres() as pg:` a migrated database at `pg.dsn`; `await pg.stop()` / `await pg.start()`."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.skip("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) are not installed")
        self._bin = bin_dir
        self.port = free_port()
        self.dsn = f"postgresql://postgres@127.0.0.1:{self.port}/copilot"
        self._dir = Path(tempfile.mkdtemp(prefix="copilot-own-pg-"))
        self._data = self._dir / "data"
        self.log = self._dir / "server.log"
        self._user = pwd.getpwnam(_SERVER_USER) if os.geteuid() == 0 else None

    async def __aenter__(self) -> OwnPostgres:
        try:
            await asyncio.to_thread(self._initdb)
            await self.start()
            conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
            try:
                await conn.execute("CREATE DATABASE copilot")
            finally:
                await conn.close()
            await upgrade_dsn(self.dsn)
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if (self._data / "postmaster.pid").exists():
                await asyncio.to_thread(self._pg_ctl, "stop", "-m", "immediate")
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)

    async def stop(self) -> None:
        """Fast shutdown: sessions are terminated (what clients see when a database goes away mid-query)."""
        await asyncio.to_thread(self._pg_ctl, "stop", "-m", "fast")

    async def start(self) -> None:
        options = (
            f"-p {self.port} -h 127.0.0.1 -k {self._dir} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=60"
        )
        await asyncio.to_thread(self._pg_ctl, "start", "-l", str(self.log), "-o", options)

    def _initdb(self) -> None:
        if self._user is not None:
            os.chown(self._dir, self._user.pw_uid, self._user.pw_gid)
        self._run("initdb", "-D", str(self._data), "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8")

    def _pg_ctl(self, action: str, *args: str) -> None:
        self._run("pg_ctl", action, "-D", str(self._data), "-w", "-t", "60", *args)

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run(
            [str(self._bin / tool), *args],
            user=self._user.pw_uid if self._user is not None else None,
            group=self._user.pw_gid if self._user is not None else None,
            extra_groups=[] if self._user is not None else None,
            cwd=self._dir,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text() if self.log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{result.stdout}{result.stderr}\n{log[-3000:]}")
