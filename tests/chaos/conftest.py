"""Fixtures of the chaos suite: one rig (own PostgreSQL and Redis, mock model, two pods) per test module, a load
driver per scenario, and the figures of every scenario collected for the table printed at the end of the run.

The table is printed in pytest's terminal summary (no `-s` needed) and saved to `.chaos/results.json`; with
`COPILOT_UPDATE_RELIABILITY=1` a complete run also rewrites the table in docs/reliability.md.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests.chaos import report
from tests.chaos.accounting import Figures
from tests.chaos.driver import Driver
from tests.chaos.harness import Rig
from tests.chaos.servers import missing_servers

_ROWS = pytest.StashKey[dict[str, dict[str, Any]]]()
_STARTED = pytest.StashKey[float]()
_COLLECTED = pytest.StashKey[list[str]]()


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    """Own servers, shared by the module's scenarios (each scenario uses sessions of its own)."""
    reason = missing_servers()
    if reason:
        pytest.skip(reason)
    with Rig.started() as started:
        yield started


@pytest.fixture
def up(rig: Rig) -> Iterator[Rig]:
    """The rig with everything running, whatever an earlier scenario left behind; pod logs printed after (shown
    when the scenario fails)."""
    rig.ensure_up()
    yield rig
    print(rig.logs())


@pytest.fixture
async def driver(up: Rig) -> AsyncIterator[Driver]:
    async with Driver(lambda: [pod.url for pod in up.pods], up.token) as d:
        yield d


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Callable[[Figures], None]:
    """Keeps a scenario's figures for the table (call it before asserting, so a failing scenario has its row)."""

    def keep(figures: Figures) -> None:
        print(report.text_table([figures.row()]))
        for problem in figures.problems:
            print(problem)
        request.config.stash.setdefault(_ROWS, {})[request.node.nodeid] = figures.row()

    return keep


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[_COLLECTED] = [i.nodeid for i in session.items if _is_scenario(i)]
    session.config.stash[_STARTED] = time.monotonic()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    rows = item.config.stash.setdefault(_ROWS, {})
    if _is_scenario(item) and (rep.when == "call" or (rep.when == "setup" and not rep.passed)):
        row = rows.setdefault(item.nodeid, {"scenario": item.name})
        if hasattr(rep, "wasxfail"):
            row["outcome"] = "xfail: " + str(rep.wasxfail).split(":")[0] if rep.skipped else "xpass"
        elif str(rep.longrepr).startswith("[XPASS(strict)]"):
            row["outcome"] = "XPASS: the fix landed, remove the xfail mark"
        else:
            row["outcome"] = rep.outcome
    return rep


def _is_scenario(item: pytest.Item) -> bool:
    """A test with a row in the figures table (it takes the `record` fixture)."""
    return "record" in getattr(item, "fixturenames", ())


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    rows = config.stash.get(_ROWS, {})
    if not rows:
        return
    collected = config.stash.get(_COLLECTED, [])
    ordered = [rows[n] for n in collected if n in rows]
    terminalreporter.section("chaos figures")
    terminalreporter.write_line(report.text_table(ordered))
    results = {"meta": _meta(config), "rows": ordered}
    report.save(results)
    terminalreporter.write_line(f"saved to {report.RESULTS_PATH}")
    if os.environ.get("COPILOT_UPDATE_RELIABILITY") == "1":
        if len(ordered) == len(collected):
            report.update_doc(results)
            terminalreporter.write_line(f"updated {report.DOC_PATH}")
        else:
            terminalreporter.write_line("not updating the docs: only part of the chaos suite ran")


def _meta(config: pytest.Config) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=report.ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), platform.processor()
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "duration_s": time.monotonic() - config.stash.get(_STARTED, time.monotonic()),
        "commit": git("rev-parse", "--short", "HEAD") + ("+changes" if git("status", "--porcelain") else ""),
        "machine": f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}",
    }


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []
