"""Fixtures for the browser tests: a real `axon serve` process and Debian's Chromium."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from support.server import start_axon
from support.services import missing

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


@pytest.fixture(scope="module")
def axon_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a real `axon serve` running the bundled model.

    AXON_BROWSER_BASE_URL points the tests at a server that is already running instead.
    """
    if external := os.environ.get("AXON_BROWSER_BASE_URL"):
        yield external.rstrip("/")
        return
    env = {
        # Short replies keep the tests quick; the test that needs a long one asks per request.
        "AXON_ENGINE__DEFAULT_MAX_TOKENS": "48",
    }
    with start_axon(["serve"], env=env, data_dir=tmp_path_factory.mktemp("axon-browser")) as axon:
        yield axon.url


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not CHROMIUM.exists():
        missing(f"{CHROMIUM} is missing: run scripts/install-chromium.sh")
    return CHROMIUM


# Module scope, not session: the sync driver keeps an event loop running in this thread
# while it is open, which would break every asyncio test collected after this module.
@pytest.fixture(scope="module")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
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
