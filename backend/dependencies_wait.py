"""Waiting at startup for PostgreSQL to accept connections, bounded and logged.

Under Compose or Kubernetes the app may start before its database: exiting then turns a few seconds of ordering into
a crash loop. So the first connection is retried, with a warning per attempt, for `COPILOT_STARTUP_WAIT_SECONDS`;
only what a retry can cure is retried (refused or reset connections, unknown host names, timeouts, a server still
starting up). A wrong password or database name fails at once.

Redis needs no wait: the service starts without it (readiness answers 503, and every Redis call fails fast and is
retried by its caller) and uses it as soon as it answers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from backend.errors import ConfigurationError

log = logging.getLogger("copilot.startup")

FIRST_PAUSE_SECONDS, LONGEST_PAUSE_SECONDS = 0.5, 5.0
CONNECT_TIMEOUT_SECONDS = 5.0

_PASSING = (OSError, TimeoutError, asyncpg.CannotConnectNowError)
"""Failures of a server that is not up yet (`OSError` covers refused connections and unresolvable host names)."""


async def wait_for_postgres(dsn: str, *, within_seconds: float) -> None:
    async def probe() -> None:
        connection = await asyncpg.connect(dsn, timeout=CONNECT_TIMEOUT_SECONDS)
        await connection.close()

    await wait_until_up("PostgreSQL", probe, within_seconds=within_seconds)


async def wait_until_up(name: str, probe: Callable[[], Awaitable[None]], *, within_seconds: float) -> None:
    """Call `probe` until it succeeds; a passing failure is retried (pauses doubling up to 5 s) until
    `within_seconds` have gone by, then `ConfigurationError`."""
    started = time.monotonic()
    pause, attempt = FIRST_PAUSE_SECONDS, 1
    while True:
        try:
            await probe()
        except _PASSING as e:
            waited = time.monotonic() - started
            if waited + pause > within_seconds:
                raise ConfigurationError(
                    f"{name} did not accept connections within {within_seconds:g}s ({type(e).__name__}: {e}); "
                    "check its address, or raise COPILOT_STARTUP_WAIT_SECONDS"
                ) from e
            log.warning(
                "%s is not accepting connections yet (attempt %d, %s: %s); trying again in %.1fs (gives up after %gs)",
                name,
                attempt,
                type(e).__name__,
                e,
                pause,
                within_seconds,
            )
            await asyncio.sleep(pause)
            pause, attempt = min(pause * 2, LONGEST_PAUSE_SECONDS), attempt + 1
            continue
        if attempt > 1:
            log.info("%s accepts connections (after %.1fs)", name, time.monotonic() - started)
        return
