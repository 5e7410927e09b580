"""The layering the architecture promises (docs/architecture.md), checked on the package's own imports: each rule is
a part of the package that must not import another. A violation names the file and the import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "backend"

BASE = ("config", "mcp_config", "errors", "keys", "redis_client", "cancellation", "auth", "webhooks")
DEV = ("backend.devtools", "backend.embedded")
ROUTES = (
    "admin",
    "agui",
    "chat",
    "docs",
    "health",
    "info",
    "mcp_servers",
    "metrics",
    "operations",
    "panel",
    "sessions",
    "transcript",
    "ui_messages",
    "ws",
)
TURN_MACHINERY = ("backend.chat.turn_admission", "backend.chat.turn_driver", "backend.chat.turn_supervisor")

# (importing part, imported part, why)
RULES = [
    (("runtime",), DEV, "the composition root imports no dev tools: the CLI hands them in (runtime.Fallbacks)"),
    (("api",), DEV, "routes know no dev tools"),
    (("chat",), DEV, "the engine knows no dev tools"),
    (("store",), ("backend.chat",), "storage knows nothing of turns"),
    (("streams",), ("backend.chat",), "Redis plumbing knows nothing of turns"),
    (
        ("observability",),
        ("backend.chat", "backend.api", "backend.store", "backend.streams"),
        "sinks see facts, not the engine",
    ),
    (("tools",), ("backend.chat",), "tools see a context, not the engine"),
    (BASE, ("backend.chat",), "the base layer depends on nothing above it"),
    (("chat",), ("backend.api",), "the engine knows no HTTP"),
    (tuple(f"api/{r}" for r in ROUTES), ("backend.runtime",), "routes take narrow dependencies (api/deps.py)"),
    (("api/ws",), tuple(f"backend.api.{r}" for r in ROUTES if r != "ws"), "a transport imports no route module"),
    (("api/chat_schemas", "api/schemas", "api/ws_schemas"), TURN_MACHINERY, "bodies are values, not the runner"),
]


def _files(part: str) -> list[Path]:
    path = PACKAGE / part
    return sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]


def _imports(file: Path) -> list[str]:
    names: list[str] = []
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return names


@pytest.mark.parametrize(("parts", "forbidden", "why"), RULES, ids=[why for *_, why in RULES])
def test_a_layer_never_imports_what_it_must_not(parts: tuple[str, ...], forbidden: tuple[str, ...], why: str) -> None:
    broken = [
        f"{file.relative_to(PACKAGE.parent)} imports {name}"
        for part in parts
        for file in _files(part)
        for name in _imports(file)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]
    assert broken == [], why
