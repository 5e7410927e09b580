"""The development stand-ins `copilot serve` hands the runtime: the embedded PostgreSQL and Redis for unset URLs, and
when no model is configured the demo model (paced so a reply reads as it streams) with the example report worker
in process. The composition root never imports them; the CLI plugs them in."""

from __future__ import annotations

import functools

from backend.devtools import report_worker
from backend.devtools.mock_llm import MockLLMServer
from backend.embedded import embedded_services
from backend.runtime import Fallbacks

DEMO_PACE_MS = 30.0
"""Pause between the demo model's tokens: about 30 words a second, fast yet visibly streamed."""


def dev_fallbacks() -> Fallbacks:
    return Fallbacks(
        services=embedded_services,
        demo_model=functools.partial(MockLLMServer, default_delay_ms=DEMO_PACE_MS),
        report_worker=report_worker.in_process,
    )
