"""The web chat page in a real Chromium against a real `axon serve` with the bundled model."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, Request, Route, expect

pytestmark = pytest.mark.browser

# Generous: the first reply may wait for the model to load on a slow machine.
REPLY_TIMEOUT_MS = 120_000

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


def start_chat(page: Page, text: str) -> str:
    """Click "New chat", send `text` with Enter; returns the id of the session it created."""
    page.get_by_test_id("new-session").click()
    composer = page.get_by_test_id("composer")
    composer.fill(text)
    composer.press("Enter")
    # Generous waits: on a loaded two-core machine the first request can take seconds.
    expect(page).to_have_url(re.compile(r"#s=.+"), timeout=REPLY_TIMEOUT_MS)
    session_id = page.url.split("#s=", 1)[1]
    item = page.locator(f'[data-testid="session-item"][data-session-id="{session_id}"]')
    expect(item).to_have_count(1, timeout=REPLY_TIMEOUT_MS)
    return session_id


def test_reply_streams_and_history_survives_reload(page: Page, axon_url: str) -> None:
    prompt = "Say hello in three words."
    page.goto(f"{axon_url}/")
    page.evaluate(RECORD_ASSISTANT_TEXTS)
    start_chat(page, prompt)

    messages = page.get_by_test_id("message")
    stop = page.get_by_test_id("stop")
    expect(messages.nth(0)).to_have_attribute("data-role", "user")
    expect(messages.nth(0)).to_have_text(prompt)
    assistant = page.locator('[data-testid="message"][data-role="assistant"]')
    expect(assistant).to_have_count(1, timeout=REPLY_TIMEOUT_MS)
    expect(stop).to_be_hidden(timeout=REPLY_TIMEOUT_MS)
    expect(page.get_by_test_id("send")).to_be_enabled()
    expect(page.get_by_test_id("error")).to_be_hidden()

    reply = assistant.text_content() or ""
    assert reply.strip(), "the assistant reply is empty"
    seen: list[dict[str, Any]] = page.evaluate("window.__assistantTexts")
    streamed = {r["text"] for r in seen if r["generating"] and r["text"]}
    assert streamed, "no text was shown while the reply was being generated"
    assert len(streamed | {reply}) >= 2, f"the reply did not grow while streaming: {seen}"

    page.reload()
    expect(messages).to_have_count(2, timeout=30_000)
    expect(messages.nth(0)).to_have_attribute("data-role", "user")
    expect(messages.nth(1)).to_have_attribute("data-role", "assistant")
    assert messages.nth(0).text_content() == prompt
    assert messages.nth(1).text_content() == reply


def test_stop_cancels_a_long_reply(page: Page, axon_url: str) -> None:
    max_tokens = 1024

    def ask_for_a_long_reply(route: Route, request: Request) -> None:
        # The server's default is kept short for the other tests; this one needs room.
        if request.method == "POST" and request.url.endswith("/messages"):
            body = json.loads(request.post_data or "{}")
            route.continue_(post_data=json.dumps({**body, "max_tokens": max_tokens}))
        else:
            route.continue_()

    page.route(re.compile(r"/v1/sessions/[^/]+/messages$"), ask_for_a_long_reply)
    page.goto(f"{axon_url}/")
    story = "Write a very long story, at least ten paragraphs, about a dragon who bakes bread."
    session_id = start_chat(page, story)

    assistant = page.locator('[data-testid="message"][data-role="assistant"]')
    stop = page.get_by_test_id("stop")
    expect(assistant).to_have_count(1, timeout=REPLY_TIMEOUT_MS)
    expect(assistant).not_to_have_text("", timeout=REPLY_TIMEOUT_MS)
    expect(stop).to_be_visible()
    stop.click()

    expect(stop).to_be_hidden(timeout=30_000)
    expect(page.get_by_test_id("send")).to_be_enabled()
    expect(assistant).to_have_attribute("data-finish", "cancelled")
    # "Stopped · N tokens" comes from the server's `done` event, not from the page giving up.
    status = page.get_by_test_id("status")
    expect(status).to_have_text(re.compile(r"^Stopped · \d+ tokens$"))
    completion_tokens = int(re.findall(r"\d+", status.text_content() or "")[0])
    assert 0 < completion_tokens < max_tokens // 2

    stored = wait_for_assistant_message(axon_url, session_id)
    assert stored["finish_reason"] == "cancelled"
    assert stored["content"] == assistant.text_content()


def wait_for_assistant_message(url: str, session_id: str) -> dict[str, Any]:
    """The stored reply; it may land in the store a moment after the stream ends."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.get(f"{url}/v1/sessions/{session_id}", timeout=10)
        response.raise_for_status()
        replies = [m for m in response.json()["messages"] if m["role"] == "assistant"]
        if replies or time.monotonic() > deadline:
            assert len(replies) == 1, response.json()
            reply: dict[str, Any] = replies[0]
            return reply
        time.sleep(0.2)
