"""Packaging: every distribution that `backend/` imports is declared in `[project].dependencies`, so a plain
`pip install copilot-chat` runs (a distribution that is only there as another one's dependency can go away with
that one's next release)."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {_normalized(re.split(r"[\s\[<>=!~;]", r, maxsplit=1)[0]) for r in project["dependencies"]}


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
        if _normalized(owner) not in declared:
            missing[owner] = f"{module} in {sorted(files)}"
    assert not missing, f"imported but not declared in [project].dependencies: {missing}"


def test_test_extra_declares_no_unused_distribution() -> None:
    # fakeredis was declared and never imported; an unused test dependency only slows every install.
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    assert not [r for r in extra if r.startswith("fakeredis")]
