"""PostgreSQL and Redis for the test suite on a machine that has neither running: the embedded servers.

`--check` exits 0 when both answer on their default local ports. `--run DIR` starts the embedded servers under
DIR, writes `DIR/env` (`TEST_DATABASE_URL=...`, `TEST_REDIS_URL=...`) and keeps them up until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
from collections.abc import Sequence
from pathlib import Path

from backend.embedded import embedded_services


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


async def _serve(directory: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with embedded_services(directory / "data", postgres=True, redis=True) as urls:
        env = f"TEST_DATABASE_URL={urls.database_url}\nTEST_REDIS_URL={urls.redis_url}\n"
        tmp = directory / "env.tmp"
        tmp.write_text(env)
        tmp.rename(directory / "env")  # appears whole, so a waiting script never reads half of it
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.devtools.local_services")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true", help="exit 0 if PostgreSQL and Redis answer locally")
    group.add_argument("--run", type=Path, metavar="DIR", help="run embedded servers under DIR until stopped")
    args = parser.parse_args(argv)
    if args.check:
        return 0 if reachable("127.0.0.1", 5432) and reachable("127.0.0.1", 6379) else 1
    asyncio.run(_serve(args.run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
