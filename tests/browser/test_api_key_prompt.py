"""The web page against a server that requires API keys: it asks for one, keeps it, and
sends it on every call, under the page's Content-Security-Policy."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import ConsoleMessage, Page, Request, expect

from axon.gateway.headers import CONTENT_SECURITY_POLICY
from support.server import run_axon, start_axon

pytestmark = pytest.mark.browser

TIMEOUT_MS = 30_000
STORED_KEY = "axon.apiKey"

# Records every change to the newest assistant message, and whether Stop was showing then,
# so the test can tell a streamed reply from one that appeared all at once.
RECORD_ASSISTANT_TEXTS = """() => {
  window.__assistantTexts = [];
  new MutationObserver(() => {
    const all = document.querySelectorAll('[data-testid="message"][data-role="assistant"]');
    const last = all[all.length - 1];
    if (!last) return;
    const stop = document.querySelector('[data-testid="stop"]');
    window.__assistantTexts.push({ text: last.textContent, generating: !stop.hidden });
  }).observe(document.body, { childList: true, subtree: true, characterData: true });
}"""


@dataclass
class AuthServer:
    url: str
    key: str


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    """`axon serve` with the fake engine, requiring API keys, and a key for tenant `web`."""
    data_dir = tmp_path_factory.mktemp("axon-browser-auth")
    env = {
        "AXON_ENGINE__KIND": "fake",
        # Slow enough that the reply is seen growing, quick enough to keep the test short.
        "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": "40",
        "AXON_AUTH__REQUIRED": "true",
    }
    with start_axon(["serve"], env=env, data_dir=data_dir) as axon:
        output = run_axon(["keys", "create", "--tenant", "web"], data_dir=data_dir, env=env)
        key = output.strip().splitlines()[-1].strip()
        assert key.startswith("axon_"), "`axon keys create` printed no key on its last line"
        yield AuthServer(axon.url, key)


@dataclass
class Watch:
    """What the page did that the test checks afterwards."""

    api_calls: list[tuple[str, str, str | None]]  # method, path, Authorization header
    problems: list[str]  # CSP violations and uncaught errors


@pytest.fixture
def watch(page: Page) -> Watch:
    seen = Watch(api_calls=[], problems=[])

    def on_request(request: Request) -> None:
        path = re.sub(r"^https?://[^/]+", "", request.url)
        if path.startswith("/v1/"):
            seen.api_calls.append((request.method, path, request.headers.get("authorization")))

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and "Content Security Policy" in message.text:
            seen.problems.append(message.text)

    page.on("request", on_request)
    page.on("console", on_console)
    page.on("pageerror", lambda error: seen.problems.append(f"uncaught: {error}"))
    return seen


def stored_key(page: Page) -> Any:
    return page.evaluate(f"localStorage.getItem({STORED_KEY!r})")


def enter_key(page: Page, key: str) -> None:
    dialog = page.get_by_role("dialog", name="API key")
    expect(dialog).to_be_visible(timeout=TIMEOUT_MS)
    field = dialog.get_by_label("API key")
    expect(field).to_have_attribute("type", "password")
    expect(field).to_be_focused()
    field.fill(key)
    dialog.get_by_role("button", name="Use key").click()


def test_prompt_refuses_a_wrong_key_then_keeps_the_right_one(
    page: Page, watch: Watch, auth_server: AuthServer
) -> None:
    page.goto(f"{auth_server.url}/")
    page.evaluate(RECORD_ASSISTANT_TEXTS)
    dialog = page.get_by_role("dialog", name="API key")
    message = page.get_by_test_id("key-message")
    expect(dialog).to_be_visible(timeout=TIMEOUT_MS)
    expect(message).to_have_text("This server requires an API key.")

    wrong = "axon_" + "0" * 40
    enter_key(page, wrong)
    expect(message).to_have_text(re.compile("refused"), timeout=TIMEOUT_MS)
    expect(dialog).to_be_visible()
    expect(page.get_by_test_id("key-input")).to_have_value("")
    assert stored_key(page) is None, "a refused key stayed in storage"

    enter_key(page, auth_server.key)
    expect(dialog).to_be_hidden(timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("forget-key")).to_be_visible()
    assert stored_key(page) == auth_server.key

    prompt = "Hello through a key."
    composer = page.get_by_test_id("composer")
    composer.fill(prompt)
    composer.press("Enter")
    assistant = page.locator('[data-testid="message"][data-role="assistant"]')
    expect(assistant).to_have_count(1, timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("stop")).to_be_hidden(timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("status")).to_have_text(re.compile(r"^Done"))
    expect(page.get_by_test_id("error")).to_be_hidden()
    reply = assistant.text_content() or ""
    assert reply.strip(), "the assistant reply is empty"
    seen: list[dict[str, Any]] = page.evaluate("window.__assistantTexts")
    streamed = {r["text"] for r in seen if r["generating"] and r["text"]}
    assert len(streamed | {reply}) >= 2, f"the reply did not grow while streaming: {seen}"

    # Every call after the right key was entered carried it, the streamed turn included.
    bearer = f"Bearer {auth_server.key}"
    first_ok = next(i for i, c in enumerate(watch.api_calls) if c[2] == bearer)
    after = watch.api_calls[first_ok:]
    assert all(auth == bearer for _, _, auth in after), after
    assert any(m == "POST" and p.endswith("/messages") for m, p, _ in after), after
    assert watch.api_calls[0][2] is None  # the first call went out before any key existed

    page.reload()
    messages = page.get_by_test_id("message")
    expect(messages).to_have_count(2, timeout=TIMEOUT_MS)
    assert messages.nth(0).text_content() == prompt
    assert messages.nth(1).text_content() == reply
    expect(dialog).to_be_hidden()
    assert watch.problems == []


def test_forgetting_the_key_asks_again(page: Page, watch: Watch, auth_server: AuthServer) -> None:
    page.goto(f"{auth_server.url}/")
    enter_key(page, auth_server.key)
    dialog = page.get_by_role("dialog", name="API key")
    expect(dialog).to_be_hidden(timeout=TIMEOUT_MS)

    page.get_by_test_id("forget-key").click()
    expect(dialog).to_be_visible(timeout=TIMEOUT_MS)
    expect(page.get_by_test_id("key-message")).to_have_text("This server requires an API key.")
    expect(page.get_by_test_id("forget-key")).to_be_hidden()
    expect(page.get_by_test_id("session-item")).to_have_count(0)
    assert stored_key(page) is None
    assert watch.problems == []


def test_page_is_served_under_the_content_security_policy(
    page: Page, watch: Watch, auth_server: AuthServer
) -> None:
    response = page.goto(f"{auth_server.url}/")
    assert response is not None
    assert response.headers.get("content-security-policy") == CONTENT_SECURITY_POLICY, (
        "the page is not served with the policy: is SecurityHeaders wired into the app?"
    )
    assert response.headers.get("x-frame-options") == "DENY"
    # The script ran (it opened the prompt) and the stylesheet applied (the dialog is styled).
    expect(page.get_by_role("dialog", name="API key")).to_be_visible(timeout=TIMEOUT_MS)
    radius = page.get_by_test_id("key-dialog").evaluate("el => getComputedStyle(el).borderRadius")
    assert radius == "10px"
    assert watch.problems == []


def test_page_carries_no_inline_code() -> None:
    # The policy forbids inline code: the page must carry none for the browser to refuse.
    html = (Path(__file__).parents[2] / "src/axon/gateway/static/index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline <script> in index.html"
    assert not re.search(r"<style|\sstyle=|\son[a-z]+=", html), "inline style or handler"
