"""The API against its own OpenAPI document: schemathesis generates requests from
``/openapi.json`` (valid and invalid) for a running server with auth required, and every
answer must be documented, match its schema, and never be a 5xx.

``positive_data_acceptance`` is left out: it expects every schema-valid request to be
accepted, but some limits cannot be written in a schema, because they depend on the model
or the moment (``max_tokens`` beyond the model's context window, a ``Last-Event-ID`` from
the future), and those are rightly 400s."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.server import AxonProcess, run_axon

pytestmark = pytest.mark.e2e

ADMIN = "admin-key-of-the-fuzz-tests"
ENV = {
    "AXON_ENGINE__KIND": "fake",
    "AXON_ENGINE__MODEL": "fake-model",
    "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": "0",
    "AXON_AUTH__REQUIRED": "true",
    "AXON_AUTH__ADMIN_KEY": ADMIN,
    # The fuzzer sends hundreds of requests a minute; limits are tested elsewhere.
    "AXON_LIMITS__KEY_REQUESTS_PER_MINUTE": "0",
    "AXON_LIMITS__KEY_TOKENS_PER_MINUTE": "0",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AxonProcess, str]]:
    data_dir: Path = tmp_path_factory.mktemp("axon-fuzz")
    key = run_axon(["keys", "create", "--tenant", "fuzz"], data_dir=data_dir, env=ENV)
    process = AxonProcess(["serve"], data_dir=data_dir, env=ENV).start()
    try:
        yield process, key.strip().splitlines()[-1]
    finally:
        process.stop()


def fuzz(url: str, token: str, paths: list[str], report: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "run",
            f"{url}/openapi.json",
            "--header",
            f"Authorization: Bearer {token}",
            *paths,
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "40",
            "--seed",
            "7",
            "--request-timeout",
            "30",
            "--no-color",
            "--generation-database",
            "none",
            "--report",
            "junit",
            "--report-dir",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=report.parent,
    )


def test_the_api_keeps_to_its_openapi_document(
    server: tuple[AxonProcess, str], tmp_path: Path
) -> None:
    process, key = server
    result = fuzz(process.url, key, ["--exclude-path-regex", "^/admin/"], tmp_path / "api")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Server error" not in result.stdout


def test_the_admin_api_keeps_to_its_openapi_document(
    server: tuple[AxonProcess, str], tmp_path: Path
) -> None:
    process, _ = server
    result = fuzz(process.url, ADMIN, ["--include-path-regex", "^/admin/"], tmp_path / "admin")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
