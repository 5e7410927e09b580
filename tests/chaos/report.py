"""The chaos suite's figures as a table: printed after a run, saved as JSON, and (on request) put in
docs/reliability.md between its `chaos:start` / `chaos:end` markers."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS_PATH = ROOT / ".chaos" / "results.json"
DOC_PATH = ROOT / "docs" / "reliability.md"
START, END = "<!-- chaos:start -->\n", "\n<!-- chaos:end -->"

COLUMNS: Sequence[tuple[str, str]] = (
    ("scenario", "Scenario"),
    ("started", "Turns started"),
    ("stored_once", "Stored once"),
    ("lost", "Lost"),
    ("duplicated", "Duplicated"),
    ("busy", "Left busy"),
    ("longest_close_s", "Longest close (s)"),
    ("unclosed", "Unclosed"),
    ("open_tools", "Tools left running"),
    ("second_turns", "Second turn accepted"),
    ("unkept_chars", "Shown, not kept (chars)"),
    ("outcome", "Result"),
)


def _cells(row: Mapping[str, Any]) -> list[str]:
    return ["" if row.get(key) is None else str(row.get(key)) for key, _ in COLUMNS]


def text_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Aligned plain text, for the terminal."""
    lines = [[title for _, title in COLUMNS], *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)) for line in lines)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    head = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    return "\n".join([head, rule, *("| " + " | ".join(_cells(r)) + " |" for r in rows)])


def save(results: Mapping[str, Any], path: Path = RESULTS_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")


def update_doc(results: Mapping[str, Any], path: Path = DOC_PATH) -> None:
    """Put the run's table (with its date, commit and machine) between the doc's markers."""
    meta = results["meta"]
    block = (
        f"Run of {meta['date']} on {meta['machine']} (commit {meta['commit']}; the suite took "
        f"{meta['duration_s']:.0f} s):\n\n" + markdown_table(results["rows"])
    )
    text = path.read_text()
    i, j = text.index(START) + len(START), text.index(END)
    path.write_text(text[:i] + block + text[j:])
