"""Admin-only endpoints: what the service is configured with right now."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from backend.api.deps import Admin, Prompts

router = APIRouter(prefix="/api/chat/config", tags=["admin"])


class PromptConfig(BaseModel):
    name: str
    version: str
    label: str | None
    """The Langfuse label served (None when Langfuse is not configured)."""
    source: Literal["langfuse", "fallback"]
    """`fallback`: the built-in prompt, because Langfuse is not configured or was never reachable."""
    fetched_at: datetime | None
    last_error: str | None
    """Why the last fetch failed, if it did: the prompt in use is then the previous one (or the fallback)."""


@router.get("/prompt")
async def prompt_config(_: Admin, prompts: Prompts) -> PromptConfig:
    """The system prompt turns use now, and where it came from."""
    status = prompts.status()
    return PromptConfig(
        name=status.name,
        version=status.version,
        label=status.label,
        source=status.source,
        fetched_at=status.fetched_at,
        last_error=status.last_error,
    )
