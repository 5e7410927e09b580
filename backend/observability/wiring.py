"""Builds the prompt source and the telemetry sinks the settings ask for, and closes them at shutdown.

Langfuse (prompts and tracing) is on when both of its keys are set, PostHog when its API key is set; whatever is
not configured is simply absent (the built-in prompt, no sink). Closing flushes what the SDKs still buffer.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass

from backend.chat.prompt import default_prompt
from backend.config import Settings
from backend.observability.langfuse_tracing import LangfuseConnection, LangfuseTelemetry
from backend.observability.posthog_analytics import PostHogTelemetry, connect_posthog
from backend.observability.prompts import PromptSource
from backend.observability.telemetry import FanOut, NullTelemetry, Telemetry

log = logging.getLogger("copilot.observability")


@dataclass(frozen=True, slots=True)
class Observability:
    prompts: PromptSource
    telemetry: Telemetry


async def open_observability(settings: Settings, stack: AsyncExitStack) -> Observability:
    """Start the prompt source (its first fetch included) and the sinks; `stack` closes them, flushing first."""
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

    prompts = PromptSource(
        langfuse.client if langfuse else None,
        name=settings.langfuse_prompt_name,
        label=settings.prompt_label,
        ttl_seconds=settings.prompt_cache_ttl_seconds,
        fallback=default_prompt(),
    )
    await prompts.start()
    stack.push_async_callback(prompts.close)

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
    return Observability(prompts, telemetry)
