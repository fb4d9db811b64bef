"""The Grafana dashboards: committed JSON in sync with its source, every panel wired to the
provisioned datasource, and every query naming only metrics Axon exports."""

from __future__ import annotations

import importlib.util
import json
import re
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from axon.observability import metrics

ROOT = Path(__file__).resolve().parents[3]
GRAFANA = ROOT / "deploy" / "grafana"
PROVISIONING = GRAFANA / "provisioning"
#: Where deploy/grafana/dashboards is mounted in Grafana's container (see the provider file).
DASHBOARDS_MOUNT = "/var/lib/grafana/dashboards/axon"
#: The recording rules of deploy/prometheus/ the dashboards may read.
RECORDING_RULES = {
    f"axon_slo:{ratio}:ratio_rate{window}"
    for ratio in ("availability_errors", "ttft_slow")
    for window in ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
}
#: The series each metric type exposes (a histogram's _created is not for dashboards).
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
}
#: PromQL words that look like metric names.
KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "sum", "min", "max", "avg", "count", "group", "stddev",
    "stdvar", "topk", "bottomk", "quantile", "count_values",
}  # fmt: skip
#: A string, a range, a label list, or a name with its selector and whether it is called.
TOKEN = re.compile(
    r'"(?:[^"\\]|\\.)*"'
    r"|\[[^\]]*\]"
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    r"|(?P<name>[a-zA-Z_:][\w:]*)\s*(?P<selector>\{[^}]*\})?(?P<call>\s*\()?"
)
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
RANGED_CALL = re.compile(r"\b(\w+)\((?:[^()\[\]]|\{[^}]*\})*\[([^\]]+)\]\)")


def _load_source() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_dashboards", GRAFANA / "dashboards.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


source = _load_source()
COMMITTED = {path.name: path for path in sorted((GRAFANA / "dashboards").glob("*.json"))}


def _committed() -> dict[str, dict[str, Any]]:
    return {name: json.loads(path.read_text()) for name, path in COMMITTED.items()}


def _data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def _targets() -> list[tuple[str, str, str]]:
    """(file, panel title, expr) of every target of the committed dashboards."""
    return [
        (name, panel["title"], target["expr"])
        for name, dashboard in _committed().items()
        for panel in _data_panels(dashboard)
        for target in panel["targets"]
    ]


def _exported() -> tuple[set[str], dict[str, tuple[str, ...]]]:
    """Every series name Axon's registry exports, and each Axon metric's label names."""
    names = {
        family.name + suffix
        for family in metrics.REGISTRY.collect()
        for suffix in SUFFIXES[family.type]
    }
    labels: dict[str, tuple[str, ...]] = {}
    for wrapper in vars(metrics).values():
        if isinstance(wrapper, MetricWrapperBase):
            [family] = wrapper.describe()
            for suffix in SUFFIXES[family.type]:
                # prometheus_client keeps a metric's label names only here.
                labels[family.name + suffix] = tuple(wrapper._labelnames)
    return names, labels


def _selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """Every series selector of ``expr``: its metric name and matchers (label: op, value)."""
    found = []
    for token in TOKEN.finditer(expr):
        name = token["name"]
        if name is None or token["call"] or name in KEYWORDS:
            continue
        matchers = MATCHER.findall(token["selector"] or "")
        found.append((name, {label: (op, value) for label, op, value in matchers}))
    return found


def test_committed_dashboards_are_generated_from_their_source() -> None:
    built = source.build()
    hint = "run `python deploy/grafana/dashboards.py` and commit its output"
    assert set(COMMITTED) == set(built), f"dashboard files differ from the source; {hint}"
    stale = [
        name for name, path in COMMITTED.items() if path.read_text() != source.dumps(built[name])
    ]
    assert not stale, f"{stale} out of date; {hint}"


def test_dashboards_are_identified_for_provisioning() -> None:
    dashboards = _committed()
    assert set(dashboards) == {
        "axon-overview.json",
        "axon-turn-latency.json",
        "axon-workers.json",
        "axon-queue.json",
        "axon-datastores.json",
    }
    for name, dashboard in dashboards.items():
        # A fixed uid keeps links stable; no id lets Grafana assign its own.
        assert dashboard["uid"] == name.removesuffix(".json")
        assert dashboard["id"] is None
        assert dashboard["schemaVersion"] >= 39
        assert "axon" in dashboard["tags"]
    titles = [d["title"] for d in dashboards.values()]
    assert len(set(titles)) == len(titles)


def test_panels_have_unique_ids_and_do_not_overlap() -> None:
    for name, dashboard in _committed().items():
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        # Titles name the panels in the query list: they must tell them apart.
        titles = Counter(panel["title"] for panel in _data_panels(dashboard))
        assert [t for t, n in titles.items() if n > 1] == [], f"{name}: duplicate titles"
        cells: dict[tuple[int, int], str] = {}
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert 0 <= grid["x"] < grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']!r}"
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    other = cells.setdefault((x, y), panel["title"])
                    assert other == panel["title"], f"{name}: {other!r} overlaps {panel['title']!r}"


def test_every_panel_queries_the_provisioned_prometheus() -> None:
    provisioned = yaml.safe_load((PROVISIONING / "datasources" / "axon.yml").read_text())
    [datasource] = provisioned["datasources"]
    assert datasource["type"] == "prometheus"
    expected = {"type": "prometheus", "uid": datasource["uid"]}
    for name, dashboard in _committed().items():
        for panel in dashboard["panels"]:
            if panel["type"] == "row":
                assert "targets" not in panel, f"{name}: row {panel['title']!r} has queries"
                continue
            where = f"{name}: {panel['title']!r}"
            assert panel["datasource"] == expected, where
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                assert target["datasource"] == expected, where
                assert target["expr"].strip(), f"{where} has an empty query"
            assert panel["fieldConfig"]["defaults"].get("unit"), f"{where} has no unit"
        [variable] = dashboard["templating"]["list"]
        assert variable["name"] == "model"
        assert variable["datasource"] == expected
        assert variable["includeAll"]
        assert variable["allValue"] == ".*"


def test_every_query_names_only_exported_metrics() -> None:
    exported, _ = _exported()
    known = exported | RECORDING_RULES
    unknown = [
        (name, panel, metric)
        for name, panel, expr in _targets()
        for metric, _ in _selectors(expr)
        if metric not in known
    ]
    assert unknown == [], "queries name metrics Axon does not export"
    for dashboard in _committed().values():
        [variable] = dashboard["templating"]["list"]
        listed = re.fullmatch(r"label_values\((\w+), model\)", variable["query"]["query"])
        assert listed is not None
        assert listed[1] in exported


def test_per_model_metrics_follow_the_model_variable() -> None:
    _, labels = _exported()
    unfiltered = []
    for name, panel, expr in _targets():
        for metric, matchers in _selectors(expr):
            names = labels.get(metric, ())
            label = next((n for n in ("model", "gen_ai_request_model") if n in names), None)
            if label is not None and matchers.get(label) != ("=~", "$model"):
                unfiltered.append((name, panel, metric))
    assert unfiltered == [], 'per-model series must be selected with model=~"$model"'


def test_queries_use_only_the_substitutable_variables_and_the_rate_interval() -> None:
    for name, panel, expr in _targets():
        where = f"{name}: {panel!r}: {expr}"
        assert set(re.findall(r"\$\{?(\w+)", expr)) <= {"__rate_interval", "model"}, where
        calls = RANGED_CALL.findall(expr)
        # Every range belongs to a call this test can see and judge.
        assert len(calls) == expr.count("["), where
        for function, window in calls:
            if function in ("rate", "irate"):
                assert window == "$__rate_interval", where
            else:
                # The SLOs' 30-day budgets, from the raw counters.
                assert (function, window) == ("increase", "30d"), where


def test_query_list_covers_every_panel_target() -> None:
    listed = Counter((q.dashboard, q.panel, q.expr) for q in source.queries())
    assert listed == Counter(_targets())
    traffic = {q.dashboard for q in source.queries() if q.traffic}
    assert traffic == set(COMMITTED), "every dashboard shows data for ordinary traffic"


def test_dashboard_provider_loads_the_dashboards_folder() -> None:
    provisioned = yaml.safe_load((PROVISIONING / "dashboards" / "axon.yml").read_text())
    [provider] = provisioned["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == DASHBOARDS_MOUNT
    # Changes come from the source, not from edits in Grafana that the next load would lose.
    assert provider["allowUiUpdates"] is False


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'histogram_quantile(0.5, sum by (le, stage) (rate(a_bucket{model=~"$model"}[5m])))',
            [("a_bucket", {"model": ("=~", "$model")})],
        ),
        (
            '(sum(rate(b_total{s=~"5.."}[1m])) or vector(0)) / c',
            [("b_total", {"s": ("=~", "5..")}), ("c", {})],
        ),
        ("axon_slo:x:ratio_rate5m / 0.005", [("axon_slo:x:ratio_rate5m", {})]),
    ],
)
def test_selector_parsing(
    expr: str, expected: list[tuple[str, dict[str, tuple[str, str]]]]
) -> None:
    # The checks above are only as good as this parser: it must find every series named.
    assert _selectors(expr) == expected
