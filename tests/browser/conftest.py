"""Fixtures for the browser tests: a real `axon serve` process and Debian's Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
# Without the networking flags Chromium keeps trying to reach hosts this machine cannot.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SERVER_ENV = {
    # Short replies keep the tests quick; a test that needs a long one asks per request.
    "AXON_ENGINE__DEFAULT_MAX_TOKENS": "48",
}
READY_TIMEOUT_S = 120.0
SRC = Path(__file__).resolve().parents[2] / "src"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"axon serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    pytest.fail(f"axon serve not ready after {READY_TIMEOUT_S:.0f} s:\n{log.read_text()[-4000:]}")


def _serve_locally(data_dir: Path) -> Iterator[str]:
    """Start `python -m axon serve` on a free port; stop it at the end."""
    port = _free_port()
    env = {
        **os.environ,
        **SERVER_ENV,
        "AXON_DATA_DIR": str(data_dir),
        "AXON_SERVER__PORT": str(port),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")])),
    }
    log = data_dir / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "axon", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def axon_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real Axon server running the bundled model.

    AXON_BROWSER_BASE_URL points the tests at a server that is already running instead.
    """
    if external := os.environ.get("AXON_BROWSER_BASE_URL"):
        yield external.rstrip("/")
        return
    data_dir = tmp_path_factory.mktemp("axon-browser")
    try:
        from tests.support.server import start_axon
    except ImportError:
        yield from _serve_locally(data_dir)
        return
    with start_axon(["serve"], env=SERVER_ENV, data_dir=data_dir) as axon:
        yield axon.url.rstrip("/")


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: run scripts/install-chromium.sh"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright_driver: Playwright, chromium_path: Path) -> Iterator[Browser]:
    browser = playwright_driver.chromium.launch(
        executable_path=str(chromium_path), args=CHROMIUM_ARGS
    )
    yield browser
    browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1100, "height": 760})
    page = context.new_page()
    yield page
    context.close()
