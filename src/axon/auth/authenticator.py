"""Turn the ``Authorization`` header into a ``Principal``: an API key, a JWT, or (when the
server allows it) anonymous use. The one place every credential is checked."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import OrderedDict
from typing import Protocol

from axon.auth.base import AuthFailure
from axon.auth.keys import KEY_PREFIX, KeyRecord, KeyStore, digest
from axon.config import AuthSettings
from axon.core.types import Principal

log = logging.getLogger(__name__)

#: Verified keys (and refusals) kept in memory at most; the oldest are dropped first.
_CACHE_ENTRIES = 10_000
#: A refused key is remembered briefly, so a client retrying a bad key costs no query.
_NEGATIVE_CACHE_S = 2.0


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Principal: ...


def bearer(authorization: str | None) -> str | None:
    """The token of ``Bearer <token>``; None when no credential was sent."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthFailure("malformed")
    return token.strip()


def principal_of(record: KeyRecord) -> Principal:
    return Principal(
        tenant=record.tenant,
        subject=f"key:{record.id}",
        key_id=record.id,
        requests_per_minute=record.requests_per_minute,
        tokens_per_minute=record.tokens_per_minute,
        max_streams=record.max_streams,
    )


class Authenticator:
    """``keys`` checks API keys (cached ``key_cache_s``: the documented delay before a
    revocation takes effect); ``jwt`` checks tokens from an identity provider, if set."""

    def __init__(
        self,
        settings: AuthSettings,
        keys: KeyStore | None,
        jwt: TokenVerifier | None = None,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._jwt = jwt
        self._cache: OrderedDict[str, tuple[float, Principal | AuthFailure]] = OrderedDict()
        self._anonymous = Principal(tenant=settings.default_tenant, subject="anonymous")
        self._touches: set[asyncio.Task[None]] = set()

    @property
    def required(self) -> bool:
        return self._settings.required

    async def authenticate(self, authorization: str | None) -> Principal:
        """The caller, or ``AuthFailure``. Without auth required, a request with no
        credential (or a placeholder such as SDKs insist on) is anonymous, but a credential
        that looks like a key or a JWT is always checked: using one means wanting its
        tenant, and silently serving another would mix tenants."""
        token = bearer(authorization) if authorization else None
        if token is None:
            if self.required:
                raise AuthFailure("missing")
            return self._anonymous
        if token.startswith(KEY_PREFIX) and self._keys is not None:
            return await self._key(token)
        if self._jwt is not None and token.count(".") == 2:
            return await self._jwt.verify(token)
        if self.required:
            raise AuthFailure("unknown_key" if token.startswith(KEY_PREFIX) else "malformed")
        return self._anonymous

    def is_admin(self, authorization: str | None) -> bool:
        admin = self._settings.admin_key
        try:
            token = bearer(authorization)
        except AuthFailure:
            return False
        if admin is None or token is None:
            return False
        return hmac.compare_digest(digest(admin.get_secret_value()), digest(token))

    async def _key(self, key: str) -> Principal:
        assert self._keys is not None
        ident = digest(key)
        now = time.monotonic()
        cached = self._cache.get(ident)
        if cached is not None and cached[0] > now:
            if isinstance(cached[1], AuthFailure):
                raise AuthFailure(cached[1].reason)
            return cached[1]
        try:
            record = await self._keys.verify(key)
        except AuthFailure as failure:
            self._remember(ident, now + _NEGATIVE_CACHE_S, failure)
            raise
        principal = principal_of(record)
        ttl = self._settings.key_cache_s
        if record.expires_at is not None:
            # Never serve a key from the cache past its expiry.
            ttl = min(ttl, max(0.0, record.expires_at.timestamp() - time.time()))
        self._remember(ident, now + ttl, principal)
        task = asyncio.get_running_loop().create_task(self._touch(record.id))
        self._touches.add(task)
        task.add_done_callback(self._touches.discard)
        return principal

    def _remember(self, ident: str, until: float, value: Principal | AuthFailure) -> None:
        self._cache[ident] = (until, value)
        self._cache.move_to_end(ident)
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)

    async def _touch(self, key_id: str) -> None:
        assert self._keys is not None
        try:
            await self._keys.touch(key_id)
        except Exception:
            # Bookkeeping only: a store hiccup must not fail the request that used the key.
            log.warning("could not record the use of an API key", extra={"key_id": key_id})
