"""Axon's Grafana dashboards as code: `python deploy/grafana/dashboards.py` writes their JSON.

The committed files in `dashboards/` are generated from the `source` package next to this file
(a test keeps them in sync): `promql` holds the query helpers and the SLOs' constants, `panels`
the building blocks, `render` Grafana's JSON model, and one module per dashboard. Every panel
reads the Prometheus datasource that `provisioning/datasources/axon.yml` defines, by its fixed
uid. Queries use only two template variables, `$__rate_interval` and `$model`, so that a test
can substitute them and run every query against a live Prometheus.
"""

# The package's imports follow the search path they need.
# ruff: noqa: E402

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "dashboards"

# deploy/ is no package, and tests load this file by path: put its directory on the search
# path so that `source` imports as a package (as it does when this file runs as a script).
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from source.datastores import DATASTORES
from source.overview import OVERVIEW
from source.panels import Panel, Query
from source.queue import QUEUE
from source.render import dashboard_json
from source.turn_latency import TURN_LATENCY
from source.workers import WORKERS

DASHBOARDS = (OVERVIEW, TURN_LATENCY, WORKERS, QUEUE, DATASTORES)


def build() -> dict[str, dict[str, Any]]:
    """Every dashboard's JSON, by file name."""
    return {d.file: dashboard_json(d) for d in DASHBOARDS}


def queries() -> list[Query]:
    """Every panel query, with whether ordinary traffic must give it data."""
    return [
        Query(d.file, item.title, target.expr, item.traffic)
        for d in DASHBOARDS
        for item in d.items
        if isinstance(item, Panel)
        for target in item.targets
    ]


def dumps(dashboard: dict[str, Any]) -> str:
    """A dashboard file's text: stable, so that a regenerated file diffs cleanly."""
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def main() -> None:
    OUTPUT.mkdir(exist_ok=True)
    for name, dashboard in build().items():
        (OUTPUT / name).write_text(dumps(dashboard))
        print(f"wrote {OUTPUT / name}")


if __name__ == "__main__":
    main()
