"""How an MCP server's tools are named in the registry: `<server>__<tool>`, in the characters providers accept.

OpenAI takes tool names matching `^[a-zA-Z0-9_-]{1,64}$`; MCP allows dots, slashes and longer names. Other
characters become `_`; a name that would pass 64 characters, or that two tools of one server would share once
sanitised, is cut and given a short hash of the original, so every tool keeps a name of its own that does not
change from one listing to the next.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

MAX_NAME = 64
SEPARATOR = "__"
_INVALID = re.compile(r"[^a-zA-Z0-9_-]")


def sanitize(part: str) -> str:
    """`part` with every character providers refuse replaced by `_` (never empty)."""
    return _INVALID.sub("_", part) or "_"


def tool_names(server: str, tools: Iterable[str]) -> dict[str, str]:
    """The registry name of each of `server`'s tools, keyed by the tool's own name, in the order given.
    `server` is a valid name already (`mcp_config` checks it: at most 32 characters)."""
    prefix = server + SEPARATOR
    names: dict[str, str] = {}
    taken: set[str] = set()
    for tool in tools:
        name = prefix + sanitize(tool)
        if len(name) > MAX_NAME or name in taken:
            name = _hashed(prefix + sanitize(tool), f"{server}\0{tool}")
        names[tool] = name
        taken.add(name)
    return names


def _hashed(name: str, original: str) -> str:
    digest = hashlib.sha256(original.encode()).hexdigest()[:8]
    return f"{name[: MAX_NAME - len(digest) - 1]}_{digest}"
