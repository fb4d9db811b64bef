"""Tenants and limits on the distributed stack as separate processes (2 gateways, 2 session
managers, a fake-engine worker) on real PostgreSQL, Redis and RabbitMQ: another tenant's
data answers 404 through every route, two gateways enforce one key's limits together, token
reservations settle after a client leaves, and a full queue sheds at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support.services import cleanup, new_namespace
from support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

MODEL = "fake-model"
ADMIN = "admin-key-of-the-security-tests"
KEY_CACHE_S = 2.0


ENV = {
    "AXON_ENGINE__KIND": "fake",
    "AXON_ENGINE__MODEL": MODEL,
    "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": "50",
    "AXON_ENGINE__FAKE_REPLY_TOKENS": "2000",
    "AXON_ENGINE__CAPACITY": "64",
    "AXON_AUTH__REQUIRED": "true",
    "AXON_AUTH__ADMIN_KEY": ADMIN,
    "AXON_AUTH__KEY_CACHE_S": str(KEY_CACHE_S),
    "AXON_LIMITS__KEY_REQUESTS_PER_MINUTE": "0",
    "AXON_LIMITS__KEY_TOKENS_PER_MINUTE": "0",
    "AXON_LIMITS__TENANT_MAX_STREAMS": "0",
}


def new_key(stack: Stack, tenant: str, *flags: str) -> str:
    """``axon keys create``: the key is alone on the last line of its output."""
    return stack.axon("keys", "create", "--tenant", tenant, *flags).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ns = new_namespace()
    s = Stack(ns, tmp_path_factory.mktemp("axon-security"), ENV, workers=1)
    try:
        yield s
    finally:
        s.stop()
        cleanup(ns, [MODEL])


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_cli_lists_without_the_key_and_revokes(stack: Stack) -> None:
    key = new_key(stack, "cli-tenant", "--rpm", "7", "--expires-in-days", "3")
    listing = stack.axon("keys", "list", "--tenant", "cli-tenant")
    assert "cli-tenant" in listing
    assert "rpm=7" in listing
    assert key not in listing
    key_id = listing.split()[0]
    gateway = stack.gateways[0].url
    assert httpx.get(f"{gateway}/v1/models", headers=bearer(key)).status_code == 200
    stack.axon("keys", "revoke", key_id)
    # Every process (gateways, session managers) caches a verified key for
    # AXON_AUTH__KEY_CACHE_S; past that, the revocation holds everywhere.
    time.sleep(KEY_CACHE_S + 0.5)
    for url in (g.url for g in stack.gateways):
        codes = {httpx.get(f"{url}/v1/models", headers=bearer(key)).status_code for _ in range(4)}
        assert codes == {401}


def test_another_tenants_data_is_404_through_the_gateways_on_every_route(stack: Stack) -> None:
    a, b = bearer(new_key(stack, "alpha")), bearer(new_key(stack, "beta"))
    g1, g2 = (httpx.Client(base_url=g.url, timeout=60) for g in stack.gateways)
    sid = g1.post("/v1/sessions", json={"title": "alpha plans"}, headers=a).json()["id"]
    turn = g1.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": "alpha secret", "stream": False, "max_tokens": 4},
        headers=a,
    )
    assert turn.status_code == 200, turn.text
    reply = turn.json()["message"]["id"]
    unknown_sid, unknown_reply = "sess_000000000000ffffffffff", "msg_000000000000ffffffffff"

    def routes(s: str, r: str) -> list[tuple[str, str, dict[str, Any] | None]]:
        return [
            ("GET", f"/v1/sessions/{s}", None),
            ("DELETE", f"/v1/sessions/{s}", None),
            ("POST", f"/v1/sessions/{s}/messages", {"content": "hi", "stream": False}),
            ("POST", f"/v1/sessions/{s}/messages", {"content": "hi"}),
            ("GET", f"/v1/sessions/{s}/messages/{r}/stream", None),
            ("POST", f"/v1/sessions/{s}/messages/{r}/cancel", None),
        ]

    for (method, path, body), (_, other, _) in zip(
        routes(sid, reply), routes(unknown_sid, unknown_reply), strict=True
    ):
        theirs = g2.request(method, path, json=body, headers=b)
        unknown = g2.request(method, other, json=body, headers=b)
        assert theirs.status_code == unknown.status_code == 404, (method, path, theirs.text)
        normal = theirs.text.replace(sid, "S").replace(reply, "R")
        assert normal == unknown.text.replace(unknown_sid, "S").replace(unknown_reply, "R")
        assert "alpha" not in theirs.text
    assert g2.get("/v1/sessions", headers=b).json()["data"] == []
    mine = g2.get(f"/v1/sessions/{sid}", headers=a).json()
    assert [m["role"] for m in mine["messages"]] == ["user", "assistant"]
    # Key management goes through the gateway too, for the admin key only.
    assert g1.get("/admin/v1/keys", headers=a).status_code == 401
    assert g1.get("/admin/v1/keys", headers=bearer(ADMIN)).status_code == 200


async def _burst(stack: Stack, key: str, count: int, body: dict[str, Any]) -> list[httpx.Response]:
    # Limits count in fixed one-minute windows: a burst that straddles two of them may
    # rightly get two windows' worth. Start it early in a window, so it fits in one.
    left = 60.0 - time.time() % 60.0
    if left < 40.0:
        await asyncio.sleep(left + 0.5)
    async with (
        httpx.AsyncClient(base_url=stack.gateways[0].url, timeout=120) as g1,
        httpx.AsyncClient(base_url=stack.gateways[1].url, timeout=120) as g2,
    ):
        calls = [
            (g1, g2)[i % 2].post("/v1/chat/completions", json=body, headers=bearer(key))
            for i in range(count)
        ]
        return list(await asyncio.gather(*calls))


def test_two_gateways_share_one_keys_request_limit(stack: Stack) -> None:
    key = new_key(stack, "rpm-tenant", "--rpm", "40")
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    answers = asyncio.run(_burst(stack, key, 100, body))
    admitted = sum(r.status_code == 200 for r in answers)
    limited = sum(r.status_code == 429 for r in answers)
    print(f"\nrequests admitted across two gateways: {admitted} of a limit of 40")
    assert admitted + limited == 100, {r.status_code for r in answers}
    assert 40 * 0.95 <= admitted <= 40


def test_two_gateways_share_one_keys_token_limit(stack: Stack) -> None:
    limit = 3000
    key = new_key(stack, "tpm-tenant", "--tpm", str(limit))
    # A reply of exactly max_tokens: the reservation is what the request really uses.
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
    answers = asyncio.run(_burst(stack, key, 120, body))
    used = sum(r.json()["usage"]["total_tokens"] for r in answers if r.status_code == 200)
    print(f"\ntokens admitted across two gateways: {used} of a limit of {limit}")
    assert {r.status_code for r in answers} <= {200, 429}
    assert limit * 0.95 <= used <= limit


def test_a_reservation_settles_to_the_real_usage_after_the_client_leaves(stack: Stack) -> None:
    key = new_key(stack, "settle-tenant", "--tpm", "1200")
    big = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
    with httpx.Client(base_url=stack.gateways[0].url, timeout=60) as http:
        with http.stream(
            "POST", "/v1/chat/completions", json={**big, "stream": True}, headers=bearer(key)
        ) as r:
            assert r.status_code == 200
            for chunk in r.iter_text():
                if '"content":"' in chunk and '"content":""' not in chunk:
                    break  # the client leaves after its first token
        # Without settlement the 1,000 reserved tokens would keep a second request out.
        deadline = time.monotonic() + 30
        while True:
            again = http.post("/v1/chat/completions", json=big, headers=bearer(key))
            if again.status_code != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert again.status_code == 200, again.text
    assert again.json()["usage"]["completion_tokens"] == 1000


def _auth_failures(url: str) -> float:
    lines = httpx.get(f"{url}/metrics").text.splitlines()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("axon_auth_failures_total{")
    )


def test_an_unauthenticated_burst_never_reaches_a_session_manager(stack: Stack) -> None:
    before = [_auth_failures(m.url) for m in stack.managers]
    gateway_before = _auth_failures(stack.gateways[0].url)
    forged = bearer("axon_" + "x" * 44)
    with httpx.Client(base_url=stack.gateways[0].url) as http:
        codes = {http.get("/v1/sessions", headers=forged).status_code for _ in range(20)}
    assert codes == {401}
    assert _auth_failures(stack.gateways[0].url) == gateway_before + 20
    assert [_auth_failures(m.url) for m in stack.managers] == before


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One worker with one slot, a queue that sheds past two waiting jobs."""
    ns = new_namespace()
    env = {
        "AXON_ENGINE__KIND": "fake",
        "AXON_ENGINE__MODEL": MODEL,
        "AXON_ENGINE__FAKE_REPLY_TOKENS": "20",
        "AXON_ENGINE__CAPACITY": "1",
        "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": "20",
        "AXON_LIMITS__MAX_QUEUE_DEPTH": "2",
    }
    stack = Stack(ns, tmp_path_factory.mktemp("axon-shed"), env, managers=1, workers=1, gateways=1)
    try:
        yield stack
    finally:
        stack.stop()
        cleanup(ns, [MODEL])


async def _timed_turns(url: str, count: int) -> list[tuple[float, httpx.Response, str]]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        sids = [(await http.post("/v1/sessions", json={})).json()["id"] for _ in range(count)]

        async def turn(sid: str) -> tuple[float, httpx.Response, str]:
            started = time.monotonic()
            r = await http.post(
                f"/v1/sessions/{sid}/messages", json={"content": "hi", "stream": False}
            )
            return time.monotonic() - started, r, sid

        return list(await asyncio.gather(*(turn(s) for s in sids)))


def test_a_full_queue_sheds_at_once_and_loses_nothing_accepted(slow_stack: Stack) -> None:
    url = slow_stack.gateways[0].url
    results = asyncio.run(_timed_turns(url, 10))
    shed = [(t, r) for t, r, _ in results if r.status_code == 503]
    served = [(t, r, s) for t, r, s in results if r.status_code == 200]
    assert len(shed) + len(served) == 10, [r.status_code for _, r, _ in results]
    assert shed
    assert served
    slowest_shed = max(t for t, _ in shed)
    print(f"\nshed {len(shed)} of 10 in at most {slowest_shed * 1000:.0f} ms; served {len(served)}")
    for _, r in shed:
        assert r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["retry-after"]) >= 1
    # Refusals come back before any accepted turn could have finished (each takes 1 s):
    # they never waited in the queue.
    assert slowest_shed < min(t for t, _, _ in served)
    with httpx.Client(base_url=url) as http:
        for _, r, sid in served:
            assert r.json()["message"]["status"] == "complete"
            stored = http.get(f"/v1/sessions/{sid}").json()["messages"]
            assert [m["role"] for m in stored] == ["user", "assistant"]
