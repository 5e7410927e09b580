"""docs/security.md names real tests: every `tests/<file>.py::<test>` it cites is defined in that file."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def test_every_cited_test_exists() -> None:
    citations = CITATION.findall((ROOT / "docs" / "security.md").read_text())
    assert len(citations) > 20
    missing = []
    for path, name in citations:
        tree = ast.parse((ROOT / path).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        if name not in defined:
            missing.append(f"{path}::{name}")
    assert missing == []


def test_the_readme_links_it() -> None:
    assert "(docs/security.md)" in (ROOT / "README.md").read_text()
