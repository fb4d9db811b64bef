"""Bearer JWTs from an identity provider: check one against the issuer's JWKS and turn its
claims into a ``Principal``."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
from joserfc import jws
from joserfc.errors import (
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
    UnsupportedAlgorithmError,
)
from joserfc.jwk import Key, import_key
from joserfc.jws import CompactSignature, JWSRegistry
from joserfc.jwt import ClaimsOption, JWTClaimsRegistry

from axon.auth.base import AuthFailure
from axon.config import JwtSettings
from axon.core.types import Principal

log = logging.getLogger(__name__)

#: Longest token accepted. Checked before any decoding, so a huge header cannot make us
#: spend time on base64, JSON or signature work.
MAX_TOKEN_CHARS = 8192
#: Largest JWKS document read; a real one is a few KiB.
MAX_JWKS_BYTES = 1 << 20
#: How long one JWKS fetch may take; a slow identity provider must not stall requests.
JWKS_FETCH_TIMEOUT_S = 5.0

_MAX_SUBJECT_CHARS = 128
_TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class JwtVerifier:
    """Checks bearer JWTs against the keys of one issuer and returns who is calling.

    Only the algorithms in ``settings.algorithms`` are accepted, whatever the token's
    header says; ``none`` never is. Keys come from ``settings.jwks_file`` (if set) or
    ``settings.jwks_url`` and are cached for ``jwks_cache_s``. A token naming an unknown
    ``kid`` triggers at most one refresh per ``jwks_min_refresh_s``.
    """

    def __init__(
        self,
        settings: JwtSettings,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``http`` is used to fetch ``jwks_url`` and is left open by ``close``; without
        one, the verifier makes (and closes) its own. ``clock`` gives Unix time."""
        if not settings.enabled:
            raise ValueError("JWT verification needs `jwks_file` or `jwks_url`")
        _check_algorithms(settings.algorithms)
        self._settings = settings
        self._algorithms = list(settings.algorithms)
        self._registry = JWSRegistry(algorithms=self._algorithms, strict_check_header=False)
        # A symmetric key in a JWKS would let anyone who reads the JWKS mint tokens,
        # unless the operator deliberately shares an HMAC secret that way.
        self._accept_oct = any(alg.startswith("HS") for alg in self._algorithms)
        self._http = http
        self._owns_http = http is None
        self._clock = clock

        self._keys: list[Key] | None = None
        self._fetched_at: float | None = None  # last attempt, whether or not it worked
        self._fetch_ok = False
        # Bumped by every fetch, so callers that queued on the lock behind a fetch reuse
        # its result instead of fetching again.
        self._generation = 0
        self._lock = asyncio.Lock()

    async def verify(self, token: str) -> Principal:
        """Return the caller a valid token names; raise ``AuthFailure`` for any other."""
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise AuthFailure("malformed")
        obj = self._parse(token)
        header = obj.headers()
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise AuthFailure("bad_algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthFailure("malformed")

        keys = self._usable(alg, await self._keys_for(kid))
        if not keys:
            raise AuthFailure("bad_algorithm")
        self._check_signature(obj, keys)
        claims = self._read_claims(obj)
        return self._principal(claims)

    async def close(self) -> None:
        """Close the HTTP client, if the verifier made it."""
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    # --- the token ---

    def _parse(self, token: str) -> CompactSignature:
        try:
            obj = jws.extract_compact(token.encode("ascii"), registry=self._registry)
        except (JoseError, ValueError, TypeError, AttributeError):
            raise AuthFailure("malformed") from None
        if not isinstance(obj.protected, dict):
            raise AuthFailure("malformed")
        # RFC 7797 unencoded payloads are not JWTs; joserfc would otherwise accept them.
        if obj.protected.get("b64", True) is not True:
            raise AuthFailure("malformed")
        return obj

    def _usable(self, alg: str, keys: list[Key]) -> list[Key]:
        model = self._registry.get_alg(alg)
        usable: list[Key] = []
        for key in keys:
            try:
                model.check_key(key)  # key type, curve, and the key's own `use`/`alg`
            except JoseError:
                continue
            usable.append(key)
        return usable

    def _check_signature(self, obj: CompactSignature, keys: list[Key]) -> None:
        # Several keys only when the token names no `kid`; a JWKS holds a handful at most.
        for key in keys:
            try:
                if jws.validate_compact(obj, key, registry=self._registry):
                    return
            except UnsupportedAlgorithmError:
                raise AuthFailure("bad_algorithm") from None
            except (JoseError, TypeError, ValueError):
                # A bad `crit` list, say: joserfc checks header values only here, and
                # odd JSON types come out as TypeError rather than a JoseError.
                raise AuthFailure("malformed") from None
        raise AuthFailure("bad_signature")

    def _read_claims(self, obj: CompactSignature) -> dict[str, Any]:
        try:
            claims = json.loads(obj.payload)
        except ValueError:
            raise AuthFailure("malformed") from None
        if not isinstance(claims, dict):
            raise AuthFailure("malformed")

        options: dict[str, ClaimsOption] = {"exp": {"essential": True}}
        if self._settings.issuer is not None:
            options["iss"] = {"essential": True, "value": self._settings.issuer}
        if self._settings.audience is not None:
            options["aud"] = {"essential": True, "value": self._settings.audience}
        registry = JWTClaimsRegistry(
            now=int(self._clock()), leeway=int(self._settings.leeway_s), **options
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise AuthFailure("expired") from None
        except MissingClaimError:
            raise AuthFailure("bad_claims") from None
        except InvalidClaimError as exc:
            # joserfc raises the same error for a future `nbf`/`iat` and for one that is
            # not a number at all; only the first is a clock problem.
            future = exc.claim in ("nbf", "iat") and _is_number(claims.get(exc.claim))
            raise AuthFailure("not_yet_valid" if future else "bad_claims") from None
        except JoseError:
            raise AuthFailure("bad_claims") from None
        return claims

    def _principal(self, claims: dict[str, Any]) -> Principal:
        tenant = claims.get(self._settings.tenant_claim)
        if not isinstance(tenant, str) or not _TENANT_RE.fullmatch(tenant):
            raise AuthFailure("bad_claims")
        sub = claims.get("sub")
        subject = sub[:_MAX_SUBJECT_CHARS] if isinstance(sub, str) and sub else "unknown"
        return Principal(tenant=tenant, subject=f"jwt:{subject}")

    # --- the keys ---

    async def _keys_for(self, kid: str | None) -> list[Key]:
        """Cached keys named ``kid`` (all keys when it is None), refreshing when due."""
        generation = self._generation
        if self._refresh_due():
            await self._refresh(generation)
        if self._keys is None:
            raise AuthFailure("jwks_unavailable")

        found = self._matching(kid)
        if not found and kid is not None and self._may_refetch():
            # Maybe the issuer rotated its keys; the throttle keeps tokens with forged
            # kids from turning into a flood of requests to the identity provider.
            await self._refresh(self._generation)
            found = self._matching(kid)
        if not found:
            raise AuthFailure("unknown_kid")
        return found

    def _matching(self, kid: str | None) -> list[Key]:
        keys = self._keys or []
        return list(keys) if kid is None else [key for key in keys if key.kid == kid]

    def _refresh_due(self) -> bool:
        if self._fetched_at is None:
            return True
        # After a failure, retry no faster than the unknown-kid throttle: an identity
        # provider that is down should not get one request per incoming call.
        wait = self._settings.jwks_cache_s if self._fetch_ok else self._settings.jwks_min_refresh_s
        return self._clock() - self._fetched_at >= wait

    def _may_refetch(self) -> bool:
        return (
            self._fetched_at is None
            or self._clock() - self._fetched_at >= self._settings.jwks_min_refresh_s
        )

    async def _refresh(self, seen_generation: int) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                return  # another caller fetched while we waited
            ok = False
            try:
                self._keys = _parse_jwks(await self._load(), accept_oct=self._accept_oct)
                ok = True
            except (OSError, httpx.HTTPError, ValueError, JoseError) as exc:
                # Keep serving the keys we had: the issuer's outage should not lock out
                # every caller whose token it signed before.
                log.warning("JWKS could not be loaded (%s): %s", self._source(), exc)
            finally:
                # Recorded only once the fetch is over (even if cancelled), so callers
                # arriving meanwhile queue on the lock instead of seeing a failure.
                self._generation += 1
                self._fetched_at = self._clock()
                self._fetch_ok = ok

    def _source(self) -> str:
        return str(self._settings.jwks_file or self._settings.jwks_url)

    async def _load(self) -> bytes:
        if self._settings.jwks_file is not None:
            raw = await asyncio.to_thread(self._settings.jwks_file.read_bytes)
            if len(raw) > MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            return raw
        assert self._settings.jwks_url is not None  # `enabled` was checked at init
        if self._http is None:
            self._http = httpx.AsyncClient()
        body = bytearray()
        async with self._http.stream(
            "GET", self._settings.jwks_url, timeout=JWKS_FETCH_TIMEOUT_S
        ) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        return bytes(body)


def _check_algorithms(algorithms: list[str]) -> None:
    if not algorithms:
        raise ValueError("no JWT algorithms configured")
    for alg in algorithms:
        if alg.lower() == "none":
            raise ValueError("the JWT algorithm `none` is never accepted")
        if alg not in JWSRegistry.algorithms:
            raise ValueError(f"unknown JWT algorithm {alg!r}")


def _parse_jwks(raw: bytes, *, accept_oct: bool) -> list[Key]:
    """The signing keys of a JWKS document. Keys that cannot be imported are skipped, so
    one odd key from the issuer does not disable all the others."""
    document = json.loads(raw)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: list[Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        if entry.get("kty") == "oct" and not accept_oct:
            continue
        try:
            keys.append(import_key(entry))
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            log.warning("JWKS key %r skipped: %s", entry.get("kid"), exc)
    if not keys:
        raise ValueError("JWKS has no usable signing key")
    return keys


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
