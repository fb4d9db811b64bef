"""JwtVerifier: keys from a JWKS file or URL, every refusal reason, and the refresh throttle."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jws, jwt
from joserfc.jwk import ECKey, Key, OctKey, RSAKey

from axon.auth.base import AuthFailure, FailureReason
from axon.auth.jwt import MAX_TOKEN_CHARS, JwtVerifier
from axon.config import JwtSettings
from axon.core.types import Principal

NOW = 1_700_000_000.0
ISSUER = "https://idp.example"
AUDIENCE = "axon"
JWKS_URL = "https://idp.example/.well-known/jwks.json"


class FakeClock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})


@pytest.fixture(scope="module")
def ec_key() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": "ec-1"})


@pytest.fixture(scope="module")
def other_rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": "rsa-2"})


def jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False) for key in keys]}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def jwks_file(tmp_path: Path, rsa_key: RSAKey, ec_key: ECKey) -> Path:
    path = tmp_path / "jwks.json"
    write_json(path, jwks(rsa_key, ec_key))
    return path


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document))


def file_settings(path: Path, **overrides: Any) -> JwtSettings:
    values: dict[str, Any] = {"jwks_file": path, "issuer": ISSUER, "audience": AUDIENCE}
    values.update(overrides)
    return JwtSettings(**values)


@pytest.fixture
async def verifier(jwks_file: Path, clock: FakeClock) -> AsyncIterator[JwtVerifier]:
    v = JwtVerifier(file_settings(jwks_file), clock=clock)
    yield v
    await v.close()


def claims(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "tenant": "acme",
        "iat": int(NOW),
        "exp": int(NOW) + 300,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def sign(key: Key, alg: str, payload: dict[str, Any], **header: Any) -> str:
    return jwt.encode({"alg": alg, "kid": key.kid, **header}, payload, key, algorithms=[alg])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value).encode())


async def refused(verifier: JwtVerifier, token: str) -> FailureReason:
    with pytest.raises(AuthFailure) as info:
        await verifier.verify(token)
    return info.value.reason


# --- accepted tokens ---


async def test_rs256_token_gives_the_tenant(verifier: JwtVerifier, rsa_key: RSAKey) -> None:
    principal = await verifier.verify(sign(rsa_key, "RS256", claims()))
    assert principal == Principal(tenant="acme", subject="jwt:user-42")


async def test_es256_token_gives_the_tenant(verifier: JwtVerifier, ec_key: ECKey) -> None:
    principal = await verifier.verify(sign(ec_key, "ES256", claims(tenant="beta.team_1")))
    assert principal.tenant == "beta.team_1"
    assert principal.subject == "jwt:user-42"
    assert principal.requests_per_minute is None


async def test_audience_list_containing_ours_is_accepted(
    verifier: JwtVerifier, rsa_key: RSAKey
) -> None:
    token = sign(rsa_key, "RS256", claims(aud=["other", AUDIENCE]))
    assert (await verifier.verify(token)).tenant == "acme"


async def test_token_without_kid_uses_the_key_that_fits(
    verifier: JwtVerifier, ec_key: ECKey
) -> None:
    token = jwt.encode({"alg": "ES256"}, claims(), ec_key, algorithms=["ES256"])
    assert (await verifier.verify(token)).tenant == "acme"


async def test_expiry_within_leeway_is_accepted(
    verifier: JwtVerifier, rsa_key: RSAKey, clock: FakeClock
) -> None:
    token = sign(rsa_key, "RS256", claims(exp=int(NOW) + 10))
    clock.now = NOW + 30  # 20 s late, under the 30 s leeway
    assert (await verifier.verify(token)).tenant == "acme"


async def test_missing_sub_is_unknown_and_long_sub_is_cut(
    verifier: JwtVerifier, rsa_key: RSAKey
) -> None:
    anonymous = await verifier.verify(sign(rsa_key, "RS256", claims(sub=None)))
    assert anonymous.subject == "jwt:unknown"
    long = await verifier.verify(sign(rsa_key, "RS256", claims(sub="x" * 500)))
    assert long.subject == "jwt:" + "x" * 128


# --- refused tokens ---


async def test_alg_none_is_refused(verifier: JwtVerifier) -> None:
    token = b64json({"alg": "none", "typ": "JWT"}) + "." + b64json(claims()) + "."
    assert await refused(verifier, token) == "bad_algorithm"


async def test_hs256_signed_with_the_public_key_is_refused(
    verifier: JwtVerifier, rsa_key: RSAKey
) -> None:
    assert await refused(verifier, _hs256_with_public_pem(rsa_key)) == "bad_algorithm"


async def test_hs256_with_the_public_key_is_refused_even_when_hs256_is_allowed(
    jwks_file: Path, rsa_key: RSAKey, clock: FakeClock
) -> None:
    v = JwtVerifier(file_settings(jwks_file, algorithms=["RS256", "HS256"]), clock=clock)
    # The JWKS holds no symmetric key, and an RSA key is never used as an HMAC secret.
    assert await refused(v, _hs256_with_public_pem(rsa_key)) == "bad_algorithm"


def _hs256_with_public_pem(rsa_key: RSAKey) -> str:
    signing_input = b64json({"alg": "HS256", "kid": rsa_key.kid}) + "." + b64json(claims())
    secret = rsa_key.as_pem(private=False)
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(mac)


async def test_symmetric_jwks_keys_are_ignored_unless_hs_is_configured(
    tmp_path: Path, rsa_key: RSAKey, clock: FakeClock
) -> None:
    secret = OctKey.generate_key(256, parameters={"kid": "shared"})
    document = jwks(rsa_key)
    document["keys"].append(secret.as_dict())
    path = tmp_path / "mixed.json"
    write_json(path, document)
    # Were the symmetric key kept, this would be "bad_algorithm" (it cannot verify RS256).
    token = sign(rsa_key, "RS256", claims(), kid="shared")

    v = JwtVerifier(file_settings(path), clock=clock)
    assert await refused(v, token) == "unknown_kid"

    hs = JwtVerifier(file_settings(path, algorithms=["HS256"]), clock=clock)
    assert (await hs.verify(sign(secret, "HS256", claims()))).tenant == "acme"


async def test_algorithm_outside_the_configured_list_is_refused(
    jwks_file: Path, ec_key: ECKey, clock: FakeClock
) -> None:
    v = JwtVerifier(file_settings(jwks_file, algorithms=["RS256"]), clock=clock)
    assert await refused(v, sign(ec_key, "ES256", claims())) == "bad_algorithm"


async def test_key_of_the_wrong_type_for_the_algorithm_is_refused(
    verifier: JwtVerifier, rsa_key: RSAKey, ec_key: ECKey
) -> None:
    # Signed with the EC key but naming the RSA key's kid.
    token = sign(ec_key, "ES256", claims(), kid=rsa_key.kid)
    assert await refused(verifier, token) == "bad_algorithm"


async def test_signature_by_another_key_is_refused(
    verifier: JwtVerifier, other_rsa_key: RSAKey
) -> None:
    token = sign(other_rsa_key, "RS256", claims(), kid="rsa-1")
    assert await refused(verifier, token) == "bad_signature"


async def test_tampered_payload_is_refused(verifier: JwtVerifier, rsa_key: RSAKey) -> None:
    header, _, signature = sign(rsa_key, "RS256", claims()).split(".")
    forged = ".".join([header, b64json(claims(tenant="victim")), signature])
    assert await refused(verifier, forged) == "bad_signature"


async def test_expired_token_is_refused(
    verifier: JwtVerifier, rsa_key: RSAKey, clock: FakeClock
) -> None:
    token = sign(rsa_key, "RS256", claims(exp=int(NOW) + 60))
    clock.now = NOW + 60 + 31
    assert await refused(verifier, token) == "expired"


async def test_token_not_yet_valid_is_refused(verifier: JwtVerifier, rsa_key: RSAKey) -> None:
    token = sign(rsa_key, "RS256", claims(nbf=int(NOW) + 120))
    assert await refused(verifier, token) == "not_yet_valid"


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"iss": "https://evil.example"}, id="wrong-issuer"),
        pytest.param({"iss": None}, id="no-issuer"),
        pytest.param({"aud": "someone-else"}, id="wrong-audience"),
        pytest.param({"aud": ["a", "b"]}, id="audience-list-without-ours"),
        pytest.param({"exp": None}, id="no-expiry"),
        pytest.param({"exp": "tomorrow"}, id="expiry-not-a-number"),
        pytest.param({"nbf": "soon"}, id="nbf-not-a-number"),
        pytest.param({"tenant": None}, id="no-tenant"),
        pytest.param({"tenant": 7}, id="tenant-not-a-string"),
        pytest.param({"tenant": "../etc"}, id="tenant-bad-characters"),
        pytest.param({"tenant": "acme\n"}, id="tenant-trailing-newline"),
        pytest.param({"tenant": "a" * 65}, id="tenant-too-long"),
    ],
)
async def test_bad_claims_are_refused(
    verifier: JwtVerifier, rsa_key: RSAKey, overrides: dict[str, Any]
) -> None:
    assert await refused(verifier, sign(rsa_key, "RS256", claims(**overrides))) == "bad_claims"


async def test_tenant_claim_name_is_configurable(
    jwks_file: Path, rsa_key: RSAKey, clock: FakeClock
) -> None:
    v = JwtVerifier(file_settings(jwks_file, tenant_claim="org"), clock=clock)
    token = sign(rsa_key, "RS256", claims(tenant=None, org="acme-org"))
    assert (await v.verify(token)).tenant == "acme-org"


async def test_unknown_kid_is_refused(verifier: JwtVerifier, other_rsa_key: RSAKey) -> None:
    assert await refused(verifier, sign(other_rsa_key, "RS256", claims())) == "unknown_kid"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("garbage", id="garbage"),
        pytest.param("", id="empty"),
        pytest.param("a.b.c", id="not-base64-json"),
        pytest.param("..", id="empty-parts"),
        pytest.param("a.b.c.d.e", id="five-parts"),
        pytest.param(b64json(["alg"]) + ".e30.", id="header-is-a-list"),
        pytest.param(b64json("alg") + ".e30.", id="header-is-a-string"),
        pytest.param(b64json({"typ": "JWT"}) + ".e30.", id="header-without-alg"),
        pytest.param("ébc.déf.ghi", id="not-ascii"),
        pytest.param(
            b64json({"alg": "RS256", "kid": "rsa-1", "crit": [1]}) + ".e30.c2ln", id="bad-crit"
        ),
        pytest.param(
            b64json({"alg": "RS256", "kid": "rsa-1", "b64": False, "crit": ["b64"]}) + ".x.c2ln",
            id="unencoded-payload",
        ),
    ],
)
async def test_garbage_is_malformed(verifier: JwtVerifier, token: str) -> None:
    assert await refused(verifier, token) == "malformed"


async def test_payload_that_is_not_a_json_object_is_malformed(
    verifier: JwtVerifier, rsa_key: RSAKey
) -> None:
    forged = jws.serialize_compact(
        {"alg": "RS256", "kid": "rsa-1"}, b"[1, 2]", rsa_key, algorithms=["RS256"]
    )
    assert await refused(verifier, forged) == "malformed"


async def test_over_long_token_is_malformed(verifier: JwtVerifier, rsa_key: RSAKey) -> None:
    token = sign(rsa_key, "RS256", claims(padding="x" * MAX_TOKEN_CHARS))
    assert len(token) > MAX_TOKEN_CHARS
    assert await refused(verifier, token) == "malformed"


def test_alg_none_cannot_be_configured(jwks_file: Path) -> None:
    with pytest.raises(ValueError, match="none"):
        JwtVerifier(file_settings(jwks_file, algorithms=["RS256", "none"]))


# --- keys from a file ---


async def test_file_is_reread_after_the_cache_time(
    jwks_file: Path, rsa_key: RSAKey, other_rsa_key: RSAKey, clock: FakeClock
) -> None:
    v = JwtVerifier(file_settings(jwks_file, jwks_cache_s=300.0), clock=clock)
    assert (await v.verify(sign(rsa_key, "RS256", claims(exp=int(NOW) + 3600)))).tenant
    write_json(jwks_file, jwks(other_rsa_key))
    clock.now = NOW + 301
    token = sign(other_rsa_key, "RS256", claims(exp=int(NOW) + 3600))
    assert (await v.verify(token)).tenant == "acme"


async def test_missing_file_is_jwks_unavailable(
    tmp_path: Path, rsa_key: RSAKey, clock: FakeClock
) -> None:
    v = JwtVerifier(file_settings(tmp_path / "absent.json"), clock=clock)
    assert await refused(v, sign(rsa_key, "RS256", claims())) == "jwks_unavailable"


# --- keys from a URL ---


class Idp:
    """A JWKS endpoint behind httpx.MockTransport that counts its requests."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        self.fail: Callable[[], httpx.Response] | None = None
        self.delay = 0.0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        assert str(request.url) == JWKS_URL
        self.fetches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            return self.fail()
        return httpx.Response(200, json=self.document)


@pytest.fixture
def idp(rsa_key: RSAKey) -> Idp:
    return Idp(jwks(rsa_key))


@pytest.fixture
async def url_verifier(idp: Idp, clock: FakeClock) -> AsyncIterator[JwtVerifier]:
    async with httpx.AsyncClient(transport=httpx.MockTransport(idp.handle)) as http:
        settings = JwtSettings(
            jwks_url=JWKS_URL, jwks_cache_s=300.0, jwks_min_refresh_s=30.0, audience=AUDIENCE
        )
        v = JwtVerifier(settings, http=http, clock=clock)
        yield v
        await v.close()
        assert not http.is_closed  # a client passed in belongs to the caller


def long_lived(key: Key) -> str:
    return sign(key, "RS256", claims(exp=int(NOW) + 86_400))


async def test_url_keys_are_fetched_once_and_cached(
    url_verifier: JwtVerifier, idp: Idp, rsa_key: RSAKey, clock: FakeClock
) -> None:
    token = long_lived(rsa_key)
    for _ in range(5):
        assert (await url_verifier.verify(token)).tenant == "acme"
    assert idp.fetches == 1
    clock.now = NOW + 299
    await url_verifier.verify(token)
    assert idp.fetches == 1
    clock.now = NOW + 300
    await url_verifier.verify(token)
    assert idp.fetches == 2


async def test_unknown_kid_refreshes_at_most_once_per_interval(
    url_verifier: JwtVerifier, idp: Idp, rsa_key: RSAKey, other_rsa_key: RSAKey, clock: FakeClock
) -> None:
    forged_token = sign(other_rsa_key, "RS256", claims(), kid="forged")
    assert (await url_verifier.verify(long_lived(rsa_key))).tenant == "acme"
    assert idp.fetches == 1

    for _ in range(20):
        assert await refused(url_verifier, forged_token) == "unknown_kid"
    assert idp.fetches == 1  # the set was fetched less than 30 s ago

    clock.now = NOW + 30
    for _ in range(20):
        assert await refused(url_verifier, forged_token) == "unknown_kid"
    assert idp.fetches == 2

    clock.now = NOW + 59
    assert await refused(url_verifier, forged_token) == "unknown_kid"
    assert idp.fetches == 2


async def test_rotated_key_is_picked_up_after_the_refresh_interval(
    url_verifier: JwtVerifier, idp: Idp, rsa_key: RSAKey, other_rsa_key: RSAKey, clock: FakeClock
) -> None:
    await url_verifier.verify(long_lived(rsa_key))
    idp.document = jwks(rsa_key, other_rsa_key)
    rotated = long_lived(other_rsa_key)
    clock.now = NOW + 10
    assert await refused(url_verifier, rotated) == "unknown_kid"
    clock.now = NOW + 40
    assert (await url_verifier.verify(rotated)).tenant == "acme"
    assert idp.fetches == 2


async def test_concurrent_callers_share_one_fetch(
    url_verifier: JwtVerifier, idp: Idp, rsa_key: RSAKey, other_rsa_key: RSAKey
) -> None:
    idp.delay = 0.01
    tokens = [long_lived(rsa_key)] * 10 + [long_lived(other_rsa_key)] * 10
    results = await asyncio.gather(
        *(url_verifier.verify(t) for t in tokens), return_exceptions=True
    )
    assert all(isinstance(r, Principal) for r in results[:10])
    assert all(isinstance(r, AuthFailure) and r.reason == "unknown_kid" for r in results[10:])
    assert idp.fetches == 1


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(lambda: httpx.Response(503), id="http-503"),
        pytest.param(lambda: httpx.Response(200, text="<html>"), id="not-json"),
        pytest.param(lambda: httpx.Response(200, json={"keys": []}), id="no-keys"),
    ],
)
async def test_fetch_failure_without_keys_is_jwks_unavailable(
    url_verifier: JwtVerifier,
    idp: Idp,
    rsa_key: RSAKey,
    clock: FakeClock,
    failure: Callable[[], httpx.Response],
) -> None:
    idp.fail = failure
    token = long_lived(rsa_key)
    assert await refused(url_verifier, token) == "jwks_unavailable"
    assert await refused(url_verifier, token) == "jwks_unavailable"
    assert idp.fetches == 1  # a failing provider is not retried on every call

    idp.fail = None
    clock.now = NOW + 30
    assert (await url_verifier.verify(token)).tenant == "acme"
    assert idp.fetches == 2


async def test_connection_error_is_jwks_unavailable(rsa_key: RSAKey, clock: FakeClock) -> None:
    def unreachable(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(unreachable)) as http:
        v = JwtVerifier(JwtSettings(jwks_url=JWKS_URL), http=http, clock=clock)
        assert await refused(v, long_lived(rsa_key)) == "jwks_unavailable"


async def test_cached_keys_outlive_a_failing_provider(
    url_verifier: JwtVerifier, idp: Idp, rsa_key: RSAKey, clock: FakeClock
) -> None:
    token = long_lived(rsa_key)
    await url_verifier.verify(token)
    idp.fail = lambda: httpx.Response(500)
    clock.now = NOW + 400
    assert (await url_verifier.verify(token)).tenant == "acme"
    assert (await url_verifier.verify(token)).tenant == "acme"
    assert idp.fetches == 2
