"""API keys: long random secrets with a recognisable prefix, stored only as a SHA-256 digest
beside a short lookup prefix, and checked in constant time.

A key looks like ``axon_<12 lookup chars><32 secret chars>`` (base62, about 262 bits). The
lookup prefix finds the row; the digest of the whole key is compared with
``hmac.compare_digest``. A fast digest is enough: the keys are random and long, so there
is nothing to guess from it (a slow password hash protects low-entropy secrets).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from axon.auth.base import AuthFailure
from axon.core.errors import InvalidRequest, NotFound
from axon.core.ids import new_id
from axon.sessions.database import aware, transaction
from axon.sessions.tables import api_keys

KEY_PREFIX = "axon_"
_ALPHABET = string.ascii_letters + string.digits
_LOOKUP_CHARS = 12
_SECRET_CHARS = 32
_KEY = re.compile(rf"^{KEY_PREFIX}[A-Za-z0-9]{{{_LOOKUP_CHARS + _SECRET_CHARS}}}$")
#: Tenant names appear in Redis keys and stream names: a small, safe alphabet.
TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def check_tenant(name: str) -> str:
    if not TENANT.match(name):
        raise InvalidRequest(
            "a tenant name is 1 to 64 letters, digits, '_', '.' or '-', starting with a "
            "letter or digit",
            param="tenant",
        )
    return name


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def lookup_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + _LOOKUP_CHARS]


def generate() -> str:
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_LOOKUP_CHARS + _SECRET_CHARS))
    return KEY_PREFIX + body


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """An API key as stored: never the key itself."""

    id: str
    tenant: str
    prefix: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_streams: int | None
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def public(self) -> dict[str, object]:
        """What listings show: everything but the digest."""
        return {
            "id": self.id,
            "object": "api_key",
            "tenant": self.tenant,
            "prefix": self.prefix,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
            "max_streams": self.max_streams,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def _maybe(value: datetime | None) -> datetime | None:
    return None if value is None else aware(value)


def _record(row: sa.Row[object]) -> KeyRecord:
    m = row._mapping
    return KeyRecord(
        id=m["id"],
        tenant=m["tenant"],
        prefix=m["prefix"],
        requests_per_minute=m["requests_per_minute"],
        tokens_per_minute=m["tokens_per_minute"],
        max_streams=m["max_streams"],
        created_at=aware(m["created_at"]),
        last_used_at=_maybe(m["last_used_at"]),
        expires_at=_maybe(m["expires_at"]),
        revoked_at=_maybe(m["revoked_at"]),
    )


def _limit(value: int | None, name: str) -> int | None:
    if value is not None and value < 0:
        raise InvalidRequest(f"{name} must be 0 (unlimited) or more", param=name)
    return value


class KeyStore:
    """API keys in the durable store (the same database as the conversations)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def create(
        self,
        tenant: str,
        *,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        max_streams: int | None = None,
        expires_in_days: float | None = None,
    ) -> tuple[KeyRecord, str]:
        """Create a key; returns its record and the key, which is never retrievable again."""
        check_tenant(tenant)
        if expires_in_days is not None and expires_in_days <= 0:
            raise InvalidRequest("expires_in_days must be positive", param="expires_in_days")
        key = generate()
        now = datetime.now(UTC)
        values = {
            "id": new_id("key"),
            "tenant": tenant,
            "prefix": lookup_prefix(key),
            "digest": digest(key),
            "requests_per_minute": _limit(requests_per_minute, "requests_per_minute"),
            "tokens_per_minute": _limit(tokens_per_minute, "tokens_per_minute"),
            "max_streams": _limit(max_streams, "max_streams"),
            "created_at": now,
            "last_used_at": None,
            "expires_at": now + timedelta(days=expires_in_days) if expires_in_days else None,
            "revoked_at": None,
        }
        async with transaction(self._engine) as conn:
            await conn.execute(api_keys.insert().values(**values))
        values.pop("digest")
        return KeyRecord(**values), key  # type: ignore[arg-type]

    async def list(self, tenant: str | None = None) -> list[KeyRecord]:
        query = sa.select(api_keys).order_by(api_keys.c.created_at, api_keys.c.id)
        if tenant is not None:
            query = query.where(api_keys.c.tenant == tenant)
        async with transaction(self._engine) as conn:
            rows = (await conn.execute(query)).all()
        return [_record(r) for r in rows]

    async def revoke(self, key_id: str) -> KeyRecord:
        now = datetime.now(UTC)
        async with transaction(self._engine) as conn:
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=now)
            )
            row = (await conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id))).first()
        if row is None:
            raise NotFound(f"no API key with id {key_id!r}", param="key_id")
        return _record(row)

    async def verify(self, key: str) -> KeyRecord:
        """The record of a valid key; ``AuthFailure`` for anything else."""
        if not _KEY.match(key):
            raise AuthFailure("malformed")
        query = sa.select(api_keys).where(api_keys.c.prefix == lookup_prefix(key))
        async with transaction(self._engine) as conn:
            row = (await conn.execute(query)).first()
        # Compare a digest even when no row matched, so timing does not tell a caller
        # whether a lookup prefix exists.
        stored = row._mapping["digest"] if row is not None else "0" * 64
        if not hmac.compare_digest(stored, digest(key)) or row is None:
            raise AuthFailure("unknown_key")
        record = _record(row)
        if record.revoked_at is not None:
            raise AuthFailure("revoked")
        if record.expires_at is not None and record.expires_at <= datetime.now(UTC):
            raise AuthFailure("expired")
        return record

    async def touch(self, key_id: str) -> None:
        """Record that a key was used (called at most once per cache period per key)."""
        async with transaction(self._engine) as conn:
            await conn.execute(
                api_keys.update()
                .where(api_keys.c.id == key_id)
                .values(last_used_at=datetime.now(UTC))
            )
