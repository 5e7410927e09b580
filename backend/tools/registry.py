"""Which tools a turn may call: the `ToolRegistry`, and loading extra registries from `package.module:attribute`."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import Any

from backend.store.models import AwaitingKind
from backend.tools.base import Tool
from backend.tools.builtin import builtin_tools
from backend.tools.frontend import FrontendTool

_NAME_PATTERN = re.compile(r"[a-zA-Z0-9_-]{1,64}")
"""Tool names OpenAI accepts."""


class ToolRegistry:
    """Tools by name, in registration order, with their OpenAI schemas cached until a tool is added or removed.

    Tools of MCP servers come and go while the service runs (`tools/mcp/source.py`); a turn reads `schemas()` once
    when it starts, and a call to a tool removed since then finds none (an `unknown_tool` error)."""

    def __init__(self, tools: Iterable[Tool[Any]] = ()) -> None:
        self._tools: dict[str, Tool[Any]] = {}
        self._schemas: list[dict[str, Any]] | None = None
        self._version: str | None = None
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool[Any]) -> None:
        """Add `tool`. Raises `ValueError` for an invalid or already registered name."""
        if not isinstance(tool, Tool):
            raise TypeError(f"expected a Tool instance, got {type(tool).__name__}")
        name = getattr(tool, "name", None)
        if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
            raise ValueError(f"invalid tool name {name!r} on {type(tool).__name__}: must match ^[a-zA-Z0-9_-]{{1,64}}$")
        if name in self._tools:
            existing = type(self._tools[name]).__name__
            raise ValueError(f"duplicate tool name {name!r}: {type(tool).__name__} and {existing}")
        try:
            tool.schema()  # a missing description or a broken args_model fails here, at startup
        except Exception as exc:
            raise ValueError(f"tool {name!r} ({type(tool).__name__}) has no valid schema: {exc!r}") from exc
        self._tools[name] = tool
        self._schemas = None
        self._version = None

    def remove(self, name: str) -> None:
        """Take the tool called `name` out (nothing if there is none)."""
        if self._tools.pop(name, None) is not None:
            self._schemas = None
            self._version = None

    def get(self, name: str) -> Tool[Any] | None:
        """The tool called `name`, or None."""
        return self._tools.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool[Any]]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)

    def __repr__(self) -> str:
        return f"ToolRegistry({list(self._tools)!r})"

    def schemas(self) -> list[dict[str, Any]]:
        """The OpenAI `tools=[...]` list. Cached: treat the dicts as read-only."""
        if self._schemas is None:
            self._schemas = [tool.schema() for tool in self._tools.values()]
        return list(self._schemas)

    @property
    def version(self) -> str:
        """A short hash of `schemas()`: equal versions mean equal schemas (and equal token counts)."""
        if self._version is None:
            canonical = json.dumps(self.schemas(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            self._version = hashlib.sha256(canonical.encode()).hexdigest()[:16]
        return self._version


class TurnTools:
    """The tools one turn sees, resolved once when it starts: the process's registry, then the tools of the
    session's own MCP servers (`tools/mcp/session_servers.py`), then the frontend tools the host app declared for
    the request. The same view gives the schemas sent to the model and the tools its calls run, so a call finds
    exactly the tools the model was shown. A session tool whose name the registry holds is left out (the operator's
    tools win), and so is a frontend tool whose name a server tool holds."""

    def __init__(
        self,
        shared: ToolRegistry,
        own: Iterable[Tool[Any]] = (),
        *,
        frontend: Iterable[FrontendTool] = (),
        needing_approval: Collection[str] = (),
    ) -> None:
        self._shared = shared
        self._own = {t.name: t for t in own if t.name not in shared}
        self._frontend = {t.name: t for t in frontend if t.name not in shared and t.name not in self._own}
        self._needing_approval = needing_approval
        self._schemas = (
            shared.schemas() + [t.schema() for t in self._own.values()] + [t.schema() for t in self._frontend.values()]
        )

    def get(self, name: str) -> Tool[Any] | None:
        """The server tool called `name`, or None."""
        return self._shared.get(name) or self._own.get(name)

    def awaiting(self, name: str) -> AwaitingKind | None:
        """What a call of `name` waits for before its result exists (None: the server runs it now): the browser
        (a frontend tool), the user's answer (`ask_user`), or the user's approval."""
        if name in self._frontend:
            return "frontend"
        tool = self.get(name)
        if tool is None:
            return None
        if tool.answered_by_user:
            return "ask_user"
        if tool.requires_approval or name in self._needing_approval:
            return "approval"
        return None

    def schemas(self) -> list[dict[str, Any]]:
        """The OpenAI `tools=[...]` list of the turn."""
        return self._schemas


def load_registry(spec: str) -> ToolRegistry:
    """Import `package.module:attribute`, a `ToolRegistry` or a callable returning one.

    The attribute may be dotted (`module:holder.registry`). Every failure is a `ValueError` naming the spec.
    """
    module_name, _, attribute = spec.partition(":")
    module_name, attribute = module_name.strip(), attribute.strip()
    if not module_name or not attribute:
        raise ValueError(f"invalid tool registry spec {spec!r}: expected 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ValueError(f"tool registry {spec!r}: module {module_name!r} not found") from exc
        raise ValueError(f"tool registry {spec!r}: importing {module_name!r} failed: {exc}") from exc
    except Exception as exc:  # the plug-in's own import-time error
        raise ValueError(f"tool registry {spec!r}: importing {module_name!r} failed: {exc!r}") from exc

    target: Any = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"tool registry {spec!r}: {module_name!r} has no attribute {attribute!r}") from None

    if isinstance(target, ToolRegistry):
        return target
    if not callable(target):
        raise ValueError(f"tool registry {spec!r}: expected a ToolRegistry or a callable, got {type(target).__name__}")
    try:
        result = target()
    except Exception as exc:
        raise ValueError(f"tool registry {spec!r}: calling {attribute!r} failed: {exc!r}") from exc
    if not isinstance(result, ToolRegistry):
        raise ValueError(f"tool registry {spec!r}: {attribute}() returned {type(result).__name__}, not a ToolRegistry")
    return result


def default_registry() -> ToolRegistry:
    """A registry of the built-in tools."""
    return ToolRegistry(builtin_tools())


def build_registry(specs: Sequence[str]) -> ToolRegistry:
    """The built-in tools plus the tools of each configured registry (`Settings.tools`), in order.

    A name that is already taken (by a built-in or an earlier registry) is a `ValueError`.
    """
    registry = default_registry()
    for spec in specs:
        for tool in load_registry(spec):
            try:
                registry.register(tool)
            except ValueError as exc:
                raise ValueError(f"tool registry {spec!r}: {exc}") from exc
    return registry
