"""scripts/venv.sh (sourced by serve.sh and test.sh): pip runs only when pyproject.toml changed, so a second start
does not spend seconds resolving dependencies that are already installed."""

from __future__ import annotations

import subprocess
from pathlib import Path

VENV_SH = Path(__file__).resolve().parents[1] / "scripts" / "venv.sh"


def _project(tmp_path: Path) -> Path:
    """A project whose .venv's python only records how it was called."""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> "{tmp_path}/calls"\n')
    python.chmod(0o755)
    copilot = bin_dir / "copilot"
    copilot.write_text("#!/bin/sh\n")
    copilot.chmod(0o755)
    return tmp_path


def _ensure(project: Path, target: str) -> list[str]:
    calls = project / "calls"
    calls.unlink(missing_ok=True)
    subprocess.run(
        ["bash", "-c", f'set -euo pipefail; . "{VENV_SH}"; ensure_installed "{target}"'],
        cwd=project,
        check=True,
        timeout=60,
    )
    return calls.read_text().splitlines() if calls.exists() else []


def test_install_runs_once_per_pyproject(tmp_path: Path) -> None:
    project = _project(tmp_path)
    assert "-m pip install --quiet -e ." in _ensure(project, ".")
    assert _ensure(project, ".") == []  # second start: no pip at all
    (project / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["y"]\n')
    assert "-m pip install --quiet -e ." in _ensure(project, ".")
    assert _ensure(project, ".") == []


def test_test_extra_is_installed_when_asked_and_serves_a_plain_start(tmp_path: Path) -> None:
    project = _project(tmp_path)
    assert "-m pip install --quiet -e ." in _ensure(project, ".")
    assert "-m pip install --quiet -e .[test]" in _ensure(project, ".[test]")  # the extra was never installed
    assert _ensure(project, ".[test]") == []
    assert _ensure(project, ".") == []


def test_extras_accumulate_and_a_start_asking_fewer_installs_nothing(tmp_path: Path) -> None:
    """serve.sh asks for `.[embedded]`, test.sh for `.[test,embedded]`: after either, the other's start is free when it
    asks for no extra that was not installed."""
    project = _project(tmp_path)
    assert "-m pip install --quiet -e .[embedded,test]" in _ensure(project, ".[test,embedded]")
    assert _ensure(project, ".[embedded]") == []
    assert _ensure(project, ".") == []
    assert "-m pip install --quiet -e .[bench,embedded,test]" in _ensure(project, ".[bench]")
    (project / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "2"\n')
    assert "-m pip install --quiet -e .[embedded]" in _ensure(project, ".[embedded]")  # new metadata: asked extras
