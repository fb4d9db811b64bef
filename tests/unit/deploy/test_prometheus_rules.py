"""The Prometheus rules in deploy/prometheus: promtool accepts them and their unit tests pass,
every alert has a severity and a runbook section, and every metric they read is one that
Axon exports."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from axon.observability.metrics import REGISTRY
from support.prometheus import metric_names_in
from support.services import missing

ROOT = Path(__file__).resolve().parents[3]
RULES_DIR = ROOT / "deploy" / "prometheus"
RULE_FILES = sorted(RULES_DIR.glob("*.yml"))
TEST_FILES = sorted((RULES_DIR / "tests").glob("*.yml"))
RUNBOOKS = ROOT / "docs" / "runbooks.md"
RUNBOOK_URL = "https://github.com/axon-serving/axon/blob/main/docs/runbooks.md#"
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
SEVERITIES = {"page", "ticket"}


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _rules() -> list[dict[str, Any]]:
    return [
        rule for path in RULE_FILES for group in _load(path)["groups"] for rule in group["rules"]
    ]


ALERTS = [rule for rule in _rules() if "alert" in rule]
RECORDED = {rule["record"] for rule in _rules() if "record" in rule}


def _alert_id(rule: dict[str, Any]) -> str:
    return f"{rule['alert']}-{rule.get('labels', {}).get('severity')}"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        missing("promtool is not installed (Debian's prometheus: scripts/install-prometheus.sh)")
    return path


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=300, check=False)


def test_there_are_rules_and_rule_tests() -> None:
    assert RULE_FILES
    assert TEST_FILES
    assert ALERTS


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = _run([promtool, "check", "rules", *map(str, RULE_FILES)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(promtool: str, test_file: Path) -> None:
    result = _run([promtool, "test", "rules", str(test_file)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_both_slos_are_recorded_over_every_window() -> None:
    for window in SLO_WINDOWS:
        assert f"axon_slo:availability_errors:ratio_rate{window}" in RECORDED
        assert f"axon_slo:ttft_slow:ratio_rate{window}" in RECORDED


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading: lower case, punctuation dropped, each
    space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def runbook_anchors() -> set[str]:
    """Every heading's anchor in docs/runbooks.md; a repeated heading gets ``-1``, ``-2``..."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in RUNBOOKS.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if fenced or heading is None:
            continue
        anchor = github_anchor(heading.group(1))
        repeats = seen.get(anchor, 0)
        seen[anchor] = repeats + 1
        anchors.add(anchor if repeats == 0 else f"{anchor}-{repeats}")
    return anchors


@pytest.mark.parametrize("alert", ALERTS, ids=_alert_id)
def test_every_alert_has_a_severity_a_summary_and_a_runbook(alert: dict[str, Any]) -> None:
    assert alert.get("labels", {}).get("severity") in SEVERITIES
    annotations = alert.get("annotations", {})
    assert annotations.get("summary", "").strip()
    assert annotations.get("description", "").strip()
    url = annotations.get("runbook_url", "")
    assert url.startswith(RUNBOOK_URL), url
    anchor = url.removeprefix(RUNBOOK_URL)
    assert anchor in runbook_anchors(), f"docs/runbooks.md has no heading for #{anchor}"
    # One section per alert, named after it.
    assert anchor == github_anchor(alert["alert"])


def test_every_runbook_section_belongs_to_an_alert() -> None:
    alerts = {github_anchor(alert["alert"]) for alert in ALERTS}
    sections = {
        github_anchor(heading)
        for heading in re.findall(r"^## (Axon\w+)\s*$", RUNBOOKS.read_text(), re.MULTILINE)
    }
    assert sections == alerts


def exported_metric_names() -> set[str]:
    """The series names Axon's registry exposes, as Prometheus stores them."""
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("", "_sum", "_count"),
    }
    return {
        metric.name + suffix
        for metric in REGISTRY.collect()
        for suffix in suffixes.get(metric.type, ("",))
    }


@pytest.mark.parametrize(
    "rule", _rules(), ids=lambda rule: rule.get("alert") or rule.get("record") or "?"
)
def test_rules_read_only_metrics_axon_exports(rule: dict[str, Any]) -> None:
    known = exported_metric_names() | RECORDED | {"up"}
    unknown = {
        name
        for name in metric_names_in(rule["expr"])
        if name not in known and not name.startswith("process_")
    }
    assert not unknown, f"not exported by axon.observability.metrics: {sorted(unknown)}"


def test_runbooks_name_only_metrics_axon_exports() -> None:
    families = {metric.name for metric in REGISTRY.collect()}
    known = exported_metric_names() | families | RECORDED
    named = set(
        re.findall(r"(?<![\w:])((?:axon|gen_ai)_[a-z0-9_]+)(?![\w:])", RUNBOOKS.read_text())
    )
    assert named - known == set()


def test_unit_tests_evaluate_every_group_in_the_order_of_the_rule_files() -> None:
    # Unordered, an alert sometimes reads the value its recording rule stored one
    # evaluation earlier, and a test of that value passes or fails by chance. promtool
    # itself accepts an order that leaves a group out.
    groups = [group["name"] for path in RULE_FILES for group in _load(path)["groups"]]
    for path in TEST_FILES:
        assert _load(path).get("group_eval_order") == groups, path.name


def test_every_alert_has_unit_tests_where_it_fires_and_where_it_stays_silent() -> None:
    fires: set[tuple[str, str]] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for case in _load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                expected = check.get("exp_alerts") or []
                if not expected:
                    silent.add(check["alertname"])
                for alert in expected:
                    fires.add((check["alertname"], alert["exp_labels"]["severity"]))
    for alert in ALERTS:
        name, severity = alert["alert"], alert["labels"]["severity"]
        assert (name, severity) in fires, f"no test where {name} ({severity}) fires"
        assert name in silent, f"no test where {name} stays silent"
