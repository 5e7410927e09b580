"""The system prompt of a turn. The default ships as a file in the package; a managed source (Langfuse) can
replace it without a deploy.

A prompt is a template: `{{variable}}` placeholders (Langfuse's syntax) are filled per turn by `render` with
`turn_variables`, so one cached template serves every user and page.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib import resources
from typing import Any

_VARIABLE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_MAX_URL_CHARS = 2048


@dataclass(frozen=True, slots=True)
class SystemPrompt:
    text: str
    name: str
    version: str
    """Which prompt a turn used, for logs and traces."""

    def render(self, variables: Mapping[str, object]) -> SystemPrompt:
        """This prompt with its `{{name}}` placeholders filled, the way Langfuse's `compile` does it: spaces
        inside the braces are ignored, unknown names are left as written, `None` becomes empty, and inserted
        values are not expanded again."""
        if "{{" not in self.text:
            return self

        def fill(match: re.Match[str]) -> str:
            name = match.group(1).strip()
            if name not in variables:
                return match.group(0)
            value = variables[name]
            return "" if value is None else str(value)

        return replace(self, text=_VARIABLE.sub(fill, self.text))


def turn_variables(
    *, user_id: str, is_authenticated: bool, page_context: Mapping[str, Any] | None, now: datetime | None = None
) -> dict[str, str]:
    """The variables a prompt may use: `user_id`, `is_authenticated` (`true`/`false`), `page_url` (empty when
    the message came without page context) and `today` (UTC date, `YYYY-MM-DD`).

    The page's content is deliberately not a variable: it comes from the browser and reaches the model as
    user-supplied context, never as part of the system prompt. The URL is flattened to one line for the same
    reason.
    """
    url = page_context.get("url") if page_context else None
    page_url = " ".join(str(url).split())[:_MAX_URL_CHARS] if url else ""
    return {
        "user_id": user_id,
        "is_authenticated": "true" if is_authenticated else "false",
        "page_url": page_url,
        "today": (now or datetime.now(UTC)).date().isoformat(),
    }


def default_prompt() -> SystemPrompt:
    text = resources.files("backend.chat").joinpath("prompts/system.md").read_text(encoding="utf-8")
    return SystemPrompt(text=text.strip(), name="default", version="builtin")
