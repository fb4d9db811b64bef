"""checkov over deploy/terraform and over both Kubernetes overlays as they are built: no
failed check, and every skipped check says why, in place (a `#checkov:skip=ID:reason`
comment in the resource, or a `checkov.io/skipN: ID=reason` annotation on the object).

checkov lives in its own environment (``scripts/setup-checkov.sh`` builds
``.venv-checkov``): its pins would clash with this one. Without it the scans skip locally
and fail in CI; the checks of the skip comments themselves need no checkov.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from support.kustomize import build
from support.services import missing

ROOT = Path(__file__).resolve().parents[3]
TERRAFORM = ROOT / "deploy" / "terraform"
OVERLAYS = ROOT / "deploy" / "kubernetes" / "overlays"
VENV = Path(os.environ.get("AXON_CHECKOV_VENV") or ROOT / ".venv-checkov")
CHECKOV = VENV / "bin" / "checkov"
# Bounds a hung scan; a scan takes seconds, and nothing here is timed.
SCAN_TIMEOUT_S = 600
# checkov's text when a skip gives no reason.
NO_REASON = "No comment provided"

TERRAFORM_SKIP = re.compile(r"#\s*checkov:skip=([^\s:]+)(?::(.*))?")
SKIP_ID = re.compile(r"CKV2?_[A-Z0-9]+_\d+")
ANNOTATION_SKIP = re.compile(r"checkov\.io/skip\d+")


@pytest.fixture(scope="module")
def checkov() -> Path:
    if not CHECKOV.exists():
        missing(f"{CHECKOV} is missing: run `bash scripts/setup-checkov.sh`")
    return CHECKOV


def _scan(checkov: Path, directory: Path, framework: str) -> dict[str, Any]:
    """checkov's JSON report for ``directory`` under one framework."""
    args = [str(checkov), "-d", str(directory), "--framework", framework, "-o", "json"]
    # Offline: no policy metadata from the vendor's API, no registry modules (the
    # terraform-aws-modules calls are scanned as calls; their insides are the modules').
    args += ["--skip-download", "--download-external-modules", "false"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=SCAN_TIMEOUT_S, check=False)
    # Exit status 1 means failed checks, which the tests report themselves.
    assert done.returncode in (0, 1), f"checkov exited {done.returncode}:\n{done.stderr[-4000:]}"
    report = json.loads(done.stdout)
    [result] = report if isinstance(report, list) else [report]
    assert result.get("check_type") == framework, f"checkov scanned nothing: {result}"
    assert result["summary"]["resource_count"] > 0, result["summary"]
    assert result["summary"]["parsing_errors"] == 0, result["summary"]
    return result  # type: ignore[no-any-return]


def _failures(result: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in result["results"]["failed_checks"]
    ]


def _skips_without_reason(result: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['resource']}"
        for c in result["results"]["skipped_checks"]
        if (c["check_result"].get("suppress_comment") or NO_REASON).strip() == NO_REASON
    ]


# --- Terraform ------------------------------------------------------------------------


def _terraform_skips() -> list[tuple[str, str, str]]:
    """(file, check id, reason) of every skip comment in deploy/terraform."""
    return [
        (path.name, match.group(1), (match.group(2) or "").strip())
        for path in sorted(TERRAFORM.glob("*.tf"))
        for match in TERRAFORM_SKIP.finditer(path.read_text())
    ]


def test_every_terraform_skip_names_a_check_and_a_reason() -> None:
    skips = _terraform_skips()
    assert skips, "no skip comment found: the pattern no longer matches the files"
    for where, check, reason in skips:
        assert SKIP_ID.fullmatch(check), f"{where}: {check!r} is not a check id"
        assert reason, f"{where}: the skip of {check} gives no reason"


def test_terraform_passes_checkov(checkov: Path) -> None:
    result = _scan(checkov, TERRAFORM, "terraform")
    failures = _failures(result)
    assert not failures, "deploy/terraform:\n" + "\n".join(failures)
    unexplained = _skips_without_reason(result)
    assert not unexplained, f"skips without a reason: {unexplained}"
    # Each skip comment is one checkov honoured: a skip of a check that no longer applies
    # to its resource is stale and goes.
    honoured = {
        (Path(c["file_path"]).name, c["check_id"]) for c in result["results"]["skipped_checks"]
    }
    stale = {(where, check) for where, check, _ in _terraform_skips()} - honoured
    assert not stale, f"skip comments checkov did not use: {sorted(stale)}"


# --- Kubernetes -----------------------------------------------------------------------


def _annotation_skips(objects: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(object, annotation value) of every checkov skip annotation."""
    return [
        (f"{o['kind']}/{o['metadata']['name']}", str(value))
        for o in objects
        for key, value in (o["metadata"].get("annotations") or {}).items()
        if ANNOTATION_SKIP.fullmatch(key)
    ]


def _write(objects: list[dict[str, Any]], directory: Path) -> None:
    """One file per object, as checkov reads a folder of manifests."""
    for i, obj in enumerate(objects):
        name = f"{i:03d}-{obj['kind']}-{obj['metadata']['name']}.yaml".lower()
        (directory / name).write_text(yaml.safe_dump(obj, sort_keys=False))


@pytest.mark.parametrize("overlay", ["aws", "local"])
def test_every_kubernetes_skip_names_a_check_and_a_reason(overlay: str) -> None:
    for where, value in _annotation_skips(build(OVERLAYS / overlay)):
        check, _, reason = value.partition("=")
        assert SKIP_ID.fullmatch(check.strip()), f"{where}: {value!r} is not `CHECK_ID=reason`"
        assert reason.strip(), f"{where}: the skip of {check} gives no reason"


@pytest.mark.parametrize("overlay", ["aws", "local"])
def test_kubernetes_overlay_passes_checkov(checkov: Path, overlay: str, tmp_path: Path) -> None:
    objects = build(OVERLAYS / overlay)
    _write(objects, tmp_path)
    result = _scan(checkov, tmp_path, "kubernetes")
    failures = _failures(result)
    assert not failures, f"overlays/{overlay}:\n" + "\n".join(failures)
    unexplained = _skips_without_reason(result)
    assert not unexplained, f"skips without a reason: {unexplained}"
