"""The development stand-ins `copilot serve` hands the runtime: the embedded PostgreSQL and Redis for unset URLs, and
when no model is configured the demo model (paced so a reply reads as it streams) with the example report worker
in process. The composition root never imports them; the CLI plugs them in."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from backend.devtools import report_worker
from backend.devtools.mock_llm import MockLLMServer
from backend.errors import ConfigurationError
from backend.runtime import Fallbacks, ServiceUrls

DEMO_PACE_MS = 30.0
"""Pause between the demo model's tokens: about 30 words a second, fast yet visibly streamed."""


@asynccontextmanager
async def _embedded_services(data_dir: Path, *, postgres: bool, redis: bool) -> AsyncIterator[ServiceUrls]:
    """`backend.embedded`, imported only when a URL is unset: its servers come with the `embedded` extra."""
    try:
        from backend.embedded import embedded_services
    except ImportError as e:
        raise ConfigurationError(
            f"DATABASE_URL / REDIS_URL are not set and the embedded servers are not installed ({e.name} is missing): "
            "set both URLs, or install copilot-chat[embedded] (./scripts/serve.sh does)"
        ) from e
    async with embedded_services(data_dir, postgres=postgres, redis=redis) as urls:
        yield urls


def dev_fallbacks() -> Fallbacks:
    return Fallbacks(
        services=_embedded_services,
        demo_model=functools.partial(MockLLMServer, default_delay_ms=DEMO_PACE_MS),
        report_worker=report_worker.in_process,
    )
