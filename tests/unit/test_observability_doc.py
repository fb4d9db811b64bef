"""docs/observability.md describes what Axon really exports: every metric (its table is
generated from the definitions), every dashboard and every alert rule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "observability.md"


def test_the_metric_table_is_current() -> None:
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "metrics_table.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    doc = DOC.read_text()
    missing = [line for line in table.splitlines() if line not in doc]
    assert not missing, (
        "docs/observability.md is out of date; run "
        "`python scripts/metrics_table.py --write docs/observability.md`:\n" + "\n".join(missing)
    )


def test_every_dashboard_is_described() -> None:
    doc = DOC.read_text()
    for path in sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        assert f"**{dashboard['title']}** (`{dashboard['uid']}`)" in doc, path.name


def test_every_alert_is_described() -> None:
    doc = DOC.read_text()
    alerts = [
        rule["alert"]
        for path in sorted((ROOT / "deploy" / "prometheus").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]
    assert alerts, "no alert rules found in deploy/prometheus"
    missing = [name for name in alerts if f"`{name}`" not in doc]
    assert not missing, f"alerts not in docs/observability.md: {missing}"
