"""Builds the Langfuse connection and the telemetry sinks the settings ask for, and closes them at shutdown.

Langfuse (prompts and tracing) is on when both of its keys are set, PostHog when its API key is set; whatever is
not configured is simply absent (no connection, no sink). Closing flushes what the SDKs still buffer.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

from backend.config import Settings
from backend.observability.langfuse_tracing import LangfuseConnection, LangfuseTelemetry
from backend.observability.posthog_analytics import PostHogTelemetry, connect_posthog
from backend.observability.telemetry import FanOut, NullTelemetry, Telemetry

log = logging.getLogger("copilot.observability")


@dataclass(frozen=True, slots=True)
class Observability:
    langfuse: LangfuseConnection | None
    """Shared by tracing and the prompt source; None when Langfuse is not configured."""
    telemetry: Telemetry


async def open_observability(settings: Settings, stack: AsyncExitStack) -> Observability:
    """Open Langfuse and the sinks; `stack` closes them, flushing first."""
    langfuse: LangfuseConnection | None = None
    if settings.langfuse_public_key and settings.langfuse_secret_key:
        langfuse = LangfuseConnection.open(
            public_key=settings.langfuse_public_key,
            secret_key=settings.langfuse_secret_key.get_secret_value(),
            host=settings.langfuse_host,
            environment=settings.environment,
        )
        stack.push_async_callback(langfuse.close)
    elif settings.langfuse_public_key or settings.langfuse_secret_key:
        log.warning("Langfuse needs both LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY; it stays off")

    sinks: list[Telemetry] = []
    if langfuse is not None:
        sinks.append(LangfuseTelemetry(langfuse))
    if settings.posthog_api_key:
        posthog = PostHogTelemetry(
            connect_posthog(settings.posthog_api_key, settings.posthog_host),
            capture_content=settings.posthog_capture_content,
        )
        stack.push_async_callback(posthog.close)
        sinks.append(posthog)
    telemetry: Telemetry = FanOut(sinks) if sinks else NullTelemetry()
    return Observability(langfuse, telemetry)
