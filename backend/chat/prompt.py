"""The system prompt of a turn. The default ships as a file in the package; a managed source (Langfuse) can
replace it without a deploy."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class SystemPrompt:
    text: str
    name: str
    version: str
    """Which prompt a turn used, for logs and traces."""


def default_prompt() -> SystemPrompt:
    text = resources.files("backend.chat").joinpath("prompts/system.md").read_text(encoding="utf-8")
    return SystemPrompt(text=text.strip(), name="default", version="builtin")
