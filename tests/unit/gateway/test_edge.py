"""The edge: Host check against DNS rebinding, CORS and hardening headers on every answer
(refusals included), the gateway's path normal form, and the safe defaults at startup."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from axon.cli.run import embedded_app
from axon.config import (
    AuthSettings,
    EngineSettings,
    LimitSettings,
    ServerSettings,
    Settings,
)
from axon.config_names import check_unknown
from axon.core.errors import ConfigError, InvalidRequest
from axon.gateway.app import check_exposure
from axon.gateway.proxy import check_path
from axon.worker.engines.fake import FakeEngine

ORIGIN = "https://chat.example"


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    settings = Settings(
        data_dir=tmp_path,
        engine=EngineSettings(kind="fake", model="fake-model"),
        server=ServerSettings(cors_origins=[ORIGIN], max_body_bytes=1000),
        limits=LimitSettings(requests_per_minute=1),
    )
    application = await embedded_app(settings, FakeEngine("fake-model", reply_tokens=3))
    async with application.router.lifespan_context(application):
        yield application


def client(app: FastAPI, host: str = "localhost") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "localhost"])
async def test_a_loopback_server_answers_loopback_hosts(app: FastAPI, host: str) -> None:
    async with client(app) as c:
        r = await c.get("/v1/models", headers={"Host": host})
    assert r.status_code == 200


async def test_a_loopback_server_refuses_other_hosts_against_dns_rebinding(app: FastAPI) -> None:
    async with client(app, "attacker.example") as c:
        r = await c.get("/v1/sessions")
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "Host"


async def test_refusals_carry_cors_and_hardening_headers(app: FastAPI) -> None:
    headers = {"Origin": ORIGIN}
    chat = {"messages": [{"role": "user", "content": "hi"}]}
    async with client(app) as c:
        too_big = await c.post("/v1/chat/completions", content=b"x" * 2000, headers=headers)
        ok = await c.post("/v1/chat/completions", json=chat, headers=headers)
        limited = await c.post("/v1/chat/completions", json=chat, headers=headers)
        page = await c.get("/", headers=headers)
    assert (too_big.status_code, ok.status_code, limited.status_code) == (413, 200, 429)
    for r in (too_big, ok, limited):
        assert r.headers["access-control-allow-origin"] == ORIGIN
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "retry-after" in limited.headers["access-control-expose-headers"].lower()
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/x/../chat/completions",
        b"/v1/./chat/completions",
        b"/v1//chat/completions",
        b"/v1/x/%2e%2e/chat/completions",
        b"/v1/sessions%2Fabc",
        b"/v1/..",
    ],
)
def test_the_gateway_refuses_paths_that_would_be_rewritten(path: bytes) -> None:
    with pytest.raises(InvalidRequest):
        check_path(path)


def test_the_gateway_accepts_normal_paths() -> None:
    check_path(b"/v1/sessions/sess_1/messages/msg_2/stream?after=1-0")
    check_path(b"/v1/chat/completions")


def test_serving_anonymously_beyond_loopback_needs_an_explicit_choice() -> None:
    exposed = Settings(server=ServerSettings(host="0.0.0.0"))
    with pytest.raises(ConfigError, match="AXON_AUTH__REQUIRED"):
        check_exposure(exposed)
    check_exposure(Settings(server=ServerSettings(host="127.0.0.1")))
    check_exposure(Settings(server=ServerSettings(host="::1")))
    check_exposure(exposed.model_copy(update={"auth": AuthSettings(required=True)}))
    check_exposure(exposed.model_copy(update={"auth": AuthSettings(allow_anonymous=True)}))


def test_a_misspelled_variable_stops_startup_naming_the_closest_setting() -> None:
    with pytest.raises(ConfigError, match="did you mean AXON_AUTH__REQUIRED"):
        check_unknown(Settings, {"AXON_AUTH__REQUIRD": "true"}, None)
    with pytest.raises(ConfigError, match="AXON_NOPE"):
        check_unknown(Settings, {"AXON_NOPE": "1"}, None)
    # Settings, the client's key and the test suite's own variables are fine.
    check_unknown(
        Settings,
        {
            "AXON_AUTH__REQUIRED": "true",
            "AXON_ENGINE__OPENAI__BASE_URL": "http://x",
            "AXON_MODELS": "[]",
            "AXON_API_KEY": "k",
            "AXON_TEST_REDIS_URL": "redis://",
            "PATH": "/bin",
        },
        None,
    )


def test_a_misspelled_config_file_key_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "axon.toml"
    path.write_text('[auth]\nrequird = true\n\n[engine.openai]\nbase_url = "http://x"\n')
    with pytest.raises(ConfigError, match=r"auth\.requird.*did you mean auth\.required"):
        check_unknown(Settings, {}, path)
    path.write_text("[auth]\nrequired = true\n[limits]\nmax_messages = 3\n")
    check_unknown(Settings, {}, path)


def test_the_cli_refuses_an_unknown_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from axon.cli.main import main

    monkeypatch.setenv("AXON_AUTH__REQUIRD", "true")
    with pytest.raises(SystemExit) as exit_:
        main(["serve"])
    assert exit_.value.code == 2
    assert "did you mean AXON_AUTH__REQUIRED" in capsys.readouterr().err
