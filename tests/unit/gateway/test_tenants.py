"""Tenants through the HTTP API (embedded app, fake engine): every bad credential gets one
identical 401, another tenant's session or reply answers exactly like an unknown one on
every route, and keys are managed over HTTP with the admin key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from joserfc import jwt
from joserfc.jwk import RSAKey

from axon.cli.run import embedded_app
from axon.config import AuthSettings, EngineSettings, JwtSettings, Settings
from axon.gateway.services import Services
from axon.worker.engines.fake import FakeEngine
from support.sse import parse

ADMIN = "admin-secret-for-tests"
ISSUER = "https://idp.test"
AUDIENCE = "axon"


@pytest.fixture(scope="module")
def idp_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "idp-1"})


@pytest.fixture
def settings(tmp_path: Path, idp_key: RSAKey) -> Settings:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [idp_key.as_dict(private=False)]}))
    return Settings(
        data_dir=tmp_path,
        engine=EngineSettings(
            kind="fake", model="fake-model", context_window=512, default_max_tokens=64
        ),
        auth=AuthSettings(
            required=True,
            admin_key=ADMIN,
            jwt=JwtSettings(jwks_file=jwks, issuer=ISSUER, audience=AUDIENCE, algorithms=["RS256"]),
        ),
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    engine = FakeEngine("fake-model", context_window=512, reply_tokens=12, default_max_tokens=64)
    application = await embedded_app(settings, engine)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def http(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as c:
        yield c


async def new_key(http: httpx.AsyncClient, tenant: str, **limits: int) -> str:
    r = await http.post(
        "/admin/v1/keys",
        json={"tenant": tenant, **limits},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert r.status_code == 201, r.text
    key: str = r.json()["key"]
    return key


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token(key: RSAKey, **overrides: Any) -> str:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "u1", "tenant": "idp-tenant", "exp": now + 300}
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": key.kid}, claims, key, algorithms=["RS256"])


async def test_every_bad_credential_gets_the_same_401(
    http: httpx.AsyncClient, idp_key: RSAKey
) -> None:
    good = await new_key(http, "acme")
    revoked = await new_key(http, "acme")
    listed = (await http.get("/admin/v1/keys", headers=bearer(ADMIN))).json()["data"]
    revoked_id = next(k["id"] for k in listed if revoked.startswith(k["prefix"]))
    assert (await http.delete(f"/admin/v1/keys/{revoked_id}", headers=bearer(ADMIN))).is_success
    expired_row = await http.post(
        "/admin/v1/keys",
        json={"tenant": "acme", "expires_in_days": 0.00001},
        headers=bearer(ADMIN),
    )
    expired = expired_row.json()["key"]
    await asyncio.sleep(1.0)
    now = int(time.time())
    unsigned = b64(json.dumps({"alg": "none", "kid": "idp-1"}).encode()) + "."
    unsigned += (
        b64(json.dumps({"iss": ISSUER, "aud": AUDIENCE, "tenant": "x", "exp": now + 60}).encode())
        + "."
    )
    signing_input = b64(json.dumps({"alg": "HS256", "kid": "idp-1"}).encode()) + "."
    signing_input += b64(
        json.dumps({"iss": ISSUER, "aud": AUDIENCE, "tenant": "x", "exp": now + 60}).encode()
    )
    mac = hmac.new(idp_key.as_pem(private=False), signing_input.encode(), hashlib.sha256).digest()
    hs256_with_public_key = signing_input + "." + b64(mac)
    stranger = RSAKey.generate_key(2048, parameters={"kid": "idp-1"})
    bad: dict[str, dict[str, str]] = {
        "none": {},
        "wrong scheme": {"Authorization": f"Basic {good}"},
        "wrong key": bearer(good[:-4] + "AAAA"),
        "truncated key": bearer(good[:-1]),
        "revoked key": bearer(revoked),
        "expired key": bearer(expired),
        "alg none": bearer(unsigned),
        "hs256 with the public key": bearer(hs256_with_public_key),
        "expired token": bearer(token(idp_key, exp=now - 3600)),
        "token not yet valid": bearer(token(idp_key, nbf=now + 3600)),
        "wrong issuer": bearer(token(idp_key, iss="https://evil.test")),
        "wrong audience": bearer(token(idp_key, aud="other")),
        "unknown kid": bearer(token(RSAKey.generate_key(2048, parameters={"kid": "nope"}))),
        "signed by a stranger": bearer(token(stranger)),
    }
    answers = {}
    for name, headers in bad.items():
        r = await http.get("/v1/sessions", headers=headers)
        answers[name] = (r.status_code, r.json())
    assert all(a == answers["none"] for a in answers.values()), answers
    assert answers["none"][0] == 401
    assert answers["none"][1]["error"]["code"] == "invalid_api_key"

    assert (await http.get("/v1/sessions", headers=bearer(good))).status_code == 200
    me = await http.post("/v1/sessions", json={}, headers=bearer(token(idp_key)))
    assert me.status_code == 201
    # Unknown routes under /v1 are no way around it either.
    assert (await http.get("/v1/nothing-here")).status_code == 401


async def test_admin_routes_need_the_admin_key(http: httpx.AsyncClient) -> None:
    key = await new_key(http, "acme")
    for headers in ({}, bearer(key), bearer("wrong")):
        r = await http.get("/admin/v1/keys", headers=headers)
        assert r.status_code == 401
    listed = (await http.get("/admin/v1/keys", headers=bearer(ADMIN))).json()["data"]
    assert [k["tenant"] for k in listed] == ["acme"]
    assert key not in json.dumps(listed)


async def test_another_tenants_session_answers_like_an_unknown_one_on_every_route(
    http: httpx.AsyncClient, services: Services
) -> None:
    a, b = bearer(await new_key(http, "tenant-a")), bearer(await new_key(http, "tenant-b"))
    sid = (await http.post("/v1/sessions", json={"title": "secret plans"}, headers=a)).json()["id"]
    turn = await http.post(
        f"/v1/sessions/{sid}/messages",
        json={"content": "the secret is 42", "stream": False},
        headers=a,
    )
    reply_id = turn.json()["message"]["id"]
    unknown_sid, unknown_reply = "sess_000000000000aaaaaaaaaa", "msg_000000000000aaaaaaaaaa"

    def routes(session_id: str, reply: str) -> list[tuple[str, str, dict[str, Any] | None]]:
        return [
            ("GET", f"/v1/sessions/{session_id}", None),
            ("DELETE", f"/v1/sessions/{session_id}", None),
            ("POST", f"/v1/sessions/{session_id}/messages", {"content": "hi", "stream": False}),
            ("POST", f"/v1/sessions/{session_id}/messages", {"content": "hi"}),
            ("GET", f"/v1/sessions/{session_id}/messages/{reply}/stream", None),
            ("POST", f"/v1/sessions/{session_id}/messages/{reply}/cancel", None),
        ]

    for (method, path, body), (_, unknown_path, _) in zip(
        routes(sid, reply_id), routes(unknown_sid, unknown_reply), strict=True
    ):
        theirs = await http.request(method, path, json=body, headers=b)
        unknown = await http.request(method, unknown_path, json=body, headers=b)
        assert theirs.status_code == unknown.status_code == 404, (method, path)
        # The same message, but for the id it names.
        masked = theirs.text.replace(sid, "ID").replace(reply_id, "RID")
        assert masked == unknown.text.replace(unknown_sid, "ID").replace(unknown_reply, "RID")
        # Nothing of the conversation (the random ids themselves may hold any digits).
        assert "secret" not in masked
        assert "42" not in masked

    # A reply id of tenant A inside a session of tenant B is unknown too.
    own = (await http.post("/v1/sessions", json={}, headers=b)).json()["id"]
    r = await http.get(f"/v1/sessions/{own}/messages/{reply_id}/stream", headers=b)
    assert r.status_code == 404
    listing = (await http.get("/v1/sessions", headers=b)).json()
    assert [s["id"] for s in listing["data"]] == [own]
    # Tenant A still has everything.
    mine = (await http.get(f"/v1/sessions/{sid}", headers=a)).json()
    assert [m["role"] for m in mine["messages"]] == ["user", "assistant"]
    events = parse(
        (await http.get(f"/v1/sessions/{sid}/messages/{reply_id}/stream", headers=a)).text
    )
    assert events[-1].event == "done"


@pytest.fixture
def services(app: FastAPI) -> Services:
    s: Services = app.state.services
    return s
