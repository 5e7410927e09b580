"""What CI runs (`.ci/run`): the whole suite, then the unit tests on the lowest allowed dependency versions
(`scripts/test_lowest.sh`), whose list of test paths must follow renames (a stale path fails CI only at its end)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_suite_then_the_lowest_versions() -> None:
    commands = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands.index("bash scripts/test.sh") < commands.index("bash scripts/test_lowest.sh")


def test_every_test_path_of_the_lowest_versions_run_exists() -> None:
    paths = re.findall(r"\btests/[\w/.]+", (ROOT / "scripts" / "test_lowest.sh").read_text())
    assert len(paths) > 10
    assert [p for p in paths if not (ROOT / p).exists()] == []
