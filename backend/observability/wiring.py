"""Builds the Langfuse connection and the telemetry sinks the settings ask for, and closes them at shutdown.

Langfuse (prompts and tracing) is on when both of its keys are set, PostHog when its API key is set; whatever is
not configured is simply absent (no connection, no sink). The turn log is always on; the metrics and OpenTelemetry
sinks follow the app's `Instruments`. Closing flushes what the SDKs still buffer.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

from backend.config import Settings
from backend.observability.instruments import Instruments
from backend.observability.langfuse_tracing import LangfuseConnection, LangfuseTelemetry
from backend.observability.metrics_telemetry import MetricsTelemetry
from backend.observability.posthog_analytics import PostHogTelemetry, connect_posthog
from backend.observability.telemetry import FanOut, Telemetry
from backend.observability.tracing import TracingTelemetry
from backend.observability.turn_log import TurnLog

log = logging.getLogger("copilot.observability")


@dataclass(frozen=True, slots=True)
class Observability:
    langfuse: LangfuseConnection | None
    """Shared by tracing and the prompt source; None when Langfuse is not configured."""
    telemetry: Telemetry


async def open_observability(
    settings: Settings, stack: AsyncExitStack, instruments: Instruments | None = None
) -> Observability:
    """Open Langfuse and the sinks; `stack` closes them, flushing first."""
    instruments = instruments or Instruments.off()
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

    # The turn log first: it binds the turn's ids, so what the other sinks log carries them.
    sinks: list[Telemetry] = [TurnLog(content=settings.log_content)]
    if instruments.metrics is not None:
        sinks.append(MetricsTelemetry(instruments.metrics))
    if instruments.tracing.enabled:
        # The turn's span becomes current in its task: what the other sinks do nests under it.
        sinks.insert(0, TracingTelemetry(instruments.tracing))
        stack.push_async_callback(instruments.tracing.close)
    if langfuse is not None:
        sinks.append(LangfuseTelemetry(langfuse))
    if settings.posthog_api_key:
        posthog = PostHogTelemetry(
            connect_posthog(settings.posthog_api_key, settings.posthog_host),
            capture_content=settings.posthog_capture_content,
        )
        stack.push_async_callback(posthog.close)
        sinks.append(posthog)
    return Observability(langfuse, FanOut(sinks))
