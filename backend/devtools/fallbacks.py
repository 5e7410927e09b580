"""The development stand-ins `copilot serve` hands the runtime: the embedded PostgreSQL and Redis for unset URLs and
the demo model when no model is configured. The composition root never imports them; the CLI plugs them in."""

from __future__ import annotations

from backend.devtools.mock_llm import MockLLMServer
from backend.embedded import embedded_services
from backend.runtime import Fallbacks


def dev_fallbacks() -> Fallbacks:
    return Fallbacks(services=embedded_services, demo_model=MockLLMServer)
