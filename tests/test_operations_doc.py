"""docs/operations.md and the Grafana dashboard say what the code exposes: every metric is in the table, the table
names no metric that does not exist, and every query of the dashboard and the alert rules is on real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

from backend.observability.metrics import Metrics

DOCS = Path(__file__).resolve().parents[1] / "docs"
OPERATIONS = (DOCS / "operations.md").read_text()
_SERIES_SUFFIX = re.compile(r"_(bucket|sum|count|created)$")


def exposed() -> set[str]:
    text = Metrics().exposition()[0].decode()
    names = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP")}
    return {name for name in names if name.startswith("copilot_") and not name.endswith("_created")}


def referenced(text: str) -> set[str]:
    return {_SERIES_SUFFIX.sub("", name) for name in re.findall(r"\bcopilot_[a-z_]+", text)}


def test_the_metric_table_lists_every_metric_and_only_those() -> None:
    table = set(re.findall(r"^\| `(copilot_[a-z_]+)` \|", OPERATIONS, re.MULTILINE))
    assert table == exposed()


def test_the_alert_rules_and_the_dashboard_query_real_metrics() -> None:
    rules = OPERATIONS[OPERATIONS.index("## Alerts worth having") : OPERATIONS.index("## Dashboard")]
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    queries = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(queries) > 20
    unknown = (referenced(rules) | referenced("\n".join(queries))) - exposed()
    assert unknown == set()
