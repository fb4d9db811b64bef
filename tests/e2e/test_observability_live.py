"""The dashboards and the alert and recording rules against a real Prometheus scraping a
running distributed stack (a gateway, a session manager and a worker with the real model)
after a burst of chat traffic: every expression is valid, every metric it names exists,
the panels about that traffic show data, and the SLO rules record."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from support.model import bundled_model
from support.prometheus import Prometheus, PrometheusError, metric_names_in, prometheus_binary
from support.services import cleanup, new_namespace
from support.sse import parse
from support.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
DASHBOARDS_SOURCE = ROOT / "deploy" / "grafana" / "dashboards.py"
DASHBOARDS_JSON = ROOT / "deploy" / "grafana" / "dashboards"

MODEL = "smollm2-135m-instruct"
ENV = {
    "AXON_ENGINE__THREADS": "1",
    "AXON_ENGINE__CAPACITY": "4",
    "AXON_ENGINE__CONTEXT_WINDOW": "2048",
}
MAX_TOKENS = 16
#: ``$__rate_interval`` where only validity matters: what Grafana sends for a 15 s scrape
#: interval (four intervals).
RATE_INTERVAL = "1m"
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


# Which metric names an expression selects: checked on expressions whose answer is known.


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            "histogram_quantile(0.95, sum by (le, model) (rate(axon_turn_stage_duration_seconds_"
            'bucket{model=~".*", stage="queue_wait", le!="+Inf"}[5m])))',
            {"axon_turn_stage_duration_seconds_bucket"},
        ),
        (
            "sum without (instance) (rate(a_total[1m] offset 5m)) / on (model) group_left "
            "(version) max by (model, version) (axon_build_info)",
            {"a_total", "axon_build_info"},
        ),
        (
            "SUM BY (on, by) (x) > BOOL 0 unless ignoring (instance) y and on() vector(1)",
            {"x", "y"},
        ),
        (
            'label_replace(up{job="axon-worker"}, "dst", "by(fake) not_a_metric", "src", "(.*)")',
            {"up"},
        ),
        (
            '(sum(rate({__name__="axon_turns_total", outcome="error"}[1h])) or vector(0))\n'
            "  # a comment naming not_a_metric\n"
            "  / sum(axon_slo:availability_errors:ratio_rate1h)",
            {"axon_turns_total", "axon_slo:availability_errors:ratio_rate1h"},
        ),
        (
            "max_over_time(deriv(axon_queue_depth_jobs[10m])[1h:1m]) * 1e-3 "
            "- process_start_time_seconds @ end() + Inf",
            {"axon_queue_depth_jobs", "process_start_time_seconds"},
        ),
        (
            'count_values("version", axon_build_info) or topk(3, {__name__=~"axon_.+"})',
            {"axon_build_info"},
        ),
    ],
)
def test_metric_names_in_an_expression(expr: str, names: set[str]) -> None:
    assert metric_names_in(expr) == names


@pytest.mark.parametrize(
    "expr",
    [
        "rate(axon_turns_total[$__rate_interval])",
        'axon_turns_total{model=~"$model"',
        "axon_turns_total / $total",
        "axon_turns_total{model}",
        'sum("unterminated)',
    ],
)
def test_an_expression_promql_would_refuse_is_an_error(expr: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        metric_names_in(expr)


# The expressions under test.


@dataclass(frozen=True)
class Expression:
    where: str
    source: str
    #: A dashboard panel that must show data after ordinary successful chat traffic.
    traffic: bool = False

    def promql(self, rate_interval: str = RATE_INTERVAL) -> str:
        """The expression as Grafana would send it, with the allowed variables filled in."""
        expr = re.sub(r"\$\{?__rate_interval\}?", rate_interval, self.source)
        expr = re.sub(r"\$\{?model\}?", ".*", expr)
        # "$1" in label_replace and "$" ending a regex are PromQL; "$name" is Grafana's.
        if re.search(r"\$\{?[A-Za-z_]|\[\[", expr):
            raise ValueError("uses a template variable other than $__rate_interval and $model")
        return expr

    def report(self, problem: object) -> str:
        return f"{self.where}: {problem}\n    {self.source}"


def _load_dashboards() -> ModuleType:
    # deploy/ is no package: load the module from its file.
    spec = importlib.util.spec_from_file_location("axon_grafana_dashboards", DASHBOARDS_SOURCE)
    assert spec is not None, f"cannot load {DASHBOARDS_SOURCE}"
    assert spec.loader is not None, f"cannot load {DASHBOARDS_SOURCE}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _json_panel_queries() -> Iterator[tuple[str, str, str]]:
    """(dashboard, panel, expr) of every panel target in the committed JSON: what Grafana
    really loads, including any panel the module's ``queries()`` might miss."""

    def walk(dashboard: str, panels: list[dict[str, Any]]) -> Iterator[tuple[str, str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    yield dashboard, panel.get("title", ""), target["expr"]
            yield from walk(dashboard, panel.get("panels", []))

    for path in sorted(DASHBOARDS_JSON.glob("*.json")):
        board = json.loads(path.read_text())
        board = board.get("dashboard", board)
        yield from walk(board.get("title", path.name), board.get("panels", []))


@pytest.fixture(scope="module")
def panels() -> list[Expression]:
    found = [
        Expression(f"dashboard {q.dashboard!r}, panel {q.panel!r}", q.expr, bool(q.traffic))
        for q in _load_dashboards().queries()
    ]
    assert found, f"{DASHBOARDS_SOURCE} lists no panel queries"
    listed = {e.source for e in found}
    found += [
        Expression(f"dashboard {board!r}, panel {title!r} (JSON)", expr)
        for board, title, expr in _json_panel_queries()
        if expr not in listed
    ]
    return found


def rule_files() -> list[Path]:
    """Every rule file (``kustomization.yaml`` beside them packs them into a ConfigMap)."""
    files = [*RULES.glob("*.yml"), *RULES.glob("*.yaml")]
    return sorted(path for path in files if path.name != "kustomization.yaml")


def _rules(prometheus: Prometheus) -> list[Expression]:
    return [
        Expression(
            f"{rule['type']} rule {rule['name']!r} (group {group['name']!r}, "
            f"{Path(group['file']).name})",
            rule["query"],
        )
        for group in prometheus.rule_groups()
        for rule in group["rules"]
    ]


def _declared() -> set[str]:
    """Every series name ``axon.observability.metrics`` can export, whether or not anything
    has happened yet (a labelled counter has no series before its first increment)."""
    from axon.observability.metrics import REGISTRY

    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
        "info": ("_info",),
    }
    names: set[str] = set()
    for family in REGISTRY.collect():
        names |= {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


# The stack, Prometheus and the traffic.


@dataclass
class Observed:
    prometheus: Prometheus
    #: When the traffic began (``time.time()``): rate windows must reach back to it.
    since: float

    def covering_window(self) -> str:
        return f"{math.ceil(time.time() - self.since) + 5 * self.prometheus.interval_s}s"


async def _new_session(http: httpx.AsyncClient) -> str:
    r = await http.post("/v1/sessions", json={"title": "observability"})
    assert r.is_success, r.text
    sid: str = r.json()["id"]
    return sid


async def _turn(http: httpx.AsyncClient, sid: str, content: str, *, stream: bool = True) -> None:
    body = {"content": content, "max_tokens": MAX_TOKENS, "stream": stream}
    r = await http.post(f"/v1/sessions/{sid}/messages", json=body)
    assert r.status_code == 200, r.text
    if stream:
        assert parse(r.text)[-1].event == "done", r.text[-500:]
    else:
        assert r.json()["message"]["content"], r.text


async def _completion(http: httpx.AsyncClient, *, stream: bool) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": MAX_TOKENS,
        "stream": stream,
    }
    r = await http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    if stream:
        assert parse(r.text)[-1].data == "[DONE]", r.text[-500:]
    else:
        assert r.json()["choices"][0]["message"]["content"], r.text


def _client(stack: Stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=stack.gateways[0].url, timeout=httpx.Timeout(180.0))


async def _first_turn(stack: Stack) -> str:
    async with _client(stack) as http:
        sid = await _new_session(http)
        await _turn(http, sid, "What colour is the sky?")
        return sid


async def _burst(stack: Stack, shared: str) -> None:
    """Seven more session turns (one continuing ``shared``, so the session cache and the
    engine's prefix cache are hit) and two stateless completions, concurrently."""
    async with _client(stack) as http:

        async def conversation(turns: int) -> None:
            sid = await _new_session(http)
            for turn in range(turns):
                await _turn(http, sid, f"Say a word, turn {turn}.", stream=turn == 0)

        await asyncio.gather(
            _turn(http, shared, "And at night?"),
            conversation(2),
            *(conversation(1) for _ in range(4)),
            _completion(http, stream=True),
            _completion(http, stream=False),
        )


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    prometheus_binary()
    bundled_model()
    ns = new_namespace()
    stack: Stack | None = None
    try:
        stack = Stack(
            ns, tmp_path_factory.mktemp("axon-observed"), ENV, managers=1, workers=1, gateways=1
        )
        jobs = {
            "axon-gateway": [g.url.removeprefix("http://") for g in stack.gateways],
            "axon-session-manager": [m.url.removeprefix("http://") for m in stack.managers],
            "axon-worker": [w.url.removeprefix("http://") for w in stack.workers],
        }
        with Prometheus(tmp_path_factory.mktemp("prometheus"), jobs, rule_files()) as prometheus:
            prometheus.wait_for_targets()
            since = time.time()
            shared = asyncio.run(_first_turn(stack))
            # Series that the first turn creates are scraped before the burst, so the burst
            # shows up as increases (a series' first sample counts as no increase).
            prometheus.wait_for_data_after(time.time())
            asyncio.run(_burst(stack, shared))
            prometheus.wait_for_data_after(time.time())
            yield Observed(prometheus, since)
    finally:
        if stack is not None:
            stack.stop()
        cleanup(ns, [MODEL])


# The checks.


@pytest.mark.e2e
@pytest.mark.integration
def test_every_panel_query_and_rule_expression_is_valid(
    observed: Observed, panels: list[Expression]
) -> None:
    problems = []
    for e in [*panels, *_rules(observed.prometheus)]:
        try:
            observed.prometheus.query(e.promql())
        except (ValueError, PrometheusError) as exc:
            problems.append(e.report(exc))
    assert not problems, "Prometheus refuses:\n" + "\n".join(problems)


@pytest.mark.e2e
@pytest.mark.integration
def test_every_metric_named_is_exported(observed: Observed, panels: list[Expression]) -> None:
    rules = _rules(observed.prometheus)
    recorded = {
        rule["name"]
        for group in observed.prometheus.rule_groups()
        for rule in group["rules"]
        if rule["type"] == "recording"
    }
    exported = observed.prometheus.metric_names() | recorded
    declared = _declared()
    problems = []
    for e in [*panels, *rules]:
        try:
            names = metric_names_in(e.promql())
        except ValueError as exc:
            problems.append(e.report(exc))
            continue
        problems += [
            e.report(
                f"names {name}, which no scraped process exports, no rule records, "
                "and axon.observability.metrics does not declare"
            )
            for name in sorted(names - exported - declared)
        ]
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
@pytest.mark.integration
def test_panels_about_the_traffic_show_data(observed: Observed, panels: list[Expression]) -> None:
    about_traffic = [e for e in panels if e.traffic]
    assert about_traffic, "no panel is marked as showing data after chat traffic"
    # A rate window reaching back to the first turn, as a dashboard looking at it would use.
    window = observed.covering_window()
    problems = []
    for e in about_traffic:
        try:
            if not observed.prometheus.query(e.promql(window)):
                problems.append(e.report(f"no data after the traffic (rate window {window})"))
        except (ValueError, PrometheusError) as exc:
            problems.append(e.report(exc))
    assert not problems, "\n".join(problems)


@pytest.mark.e2e
@pytest.mark.integration
def test_slo_ratios_are_recorded_and_every_rule_is_healthy(observed: Observed) -> None:
    files = rule_files()
    assert files, f"no rule files in {RULES}"
    groups = observed.prometheus.rule_groups()
    loaded = {Path(g["file"]).resolve() for g in groups}
    assert [f.name for f in files if f.resolve() not in loaded] == [], "rule files without groups"

    problems = [
        f"rule {rule['name']!r} (group {group['name']!r}): health {rule['health']!r}, "
        f"error {rule.get('lastError')!r}"
        for group in groups
        for rule in group["rules"]
        if rule["health"] != "ok" or rule.get("lastError")
    ]
    for window in SLO_WINDOWS:
        for ratio in ("availability_errors", "ttft_slow"):
            name = f"axon_slo:{ratio}:ratio_rate{window}"
            samples = observed.prometheus.query(name)
            values = [float(s["value"][1]) for s in samples]
            if not values:
                problems.append(f"{name}: no series after the traffic")
            elif ratio == "availability_errors" and values != [0.0] * len(values):
                # Every turn sent ended well: no server-side error to count.
                problems.append(f"{name}: {values}, expected 0 (no turn failed)")
            elif not all(0 <= v <= 1 for v in values):
                problems.append(f"{name}: {values}, not a ratio")
    assert not problems, "\n".join(problems)
