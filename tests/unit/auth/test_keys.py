"""API keys in the store: shown once, kept only as a digest, refused in every bad shape,
revoked within the cache time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from axon.auth.authenticator import Authenticator
from axon.auth.base import AuthFailure
from axon.auth.keys import KEY_PREFIX, KeyStore
from axon.config import AuthSettings
from axon.core.errors import InvalidRequest, NotFound
from axon.sessions.database import make_engine
from axon.sessions.migrate import upgrade
from axon.sessions.tables import api_keys


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[KeyStore]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}"
    await upgrade(url)
    engine = make_engine(url)
    yield KeyStore(engine)
    await engine.dispose()


async def test_a_new_key_is_long_random_prefixed_and_stored_only_as_a_digest(
    keys: KeyStore,
) -> None:
    record, key = await keys.create("acme", requests_per_minute=5, tokens_per_minute=0)

    assert key.startswith(KEY_PREFIX)
    assert len(key) >= 40
    assert record.tenant == "acme"
    assert key.startswith(record.prefix)
    assert (record.requests_per_minute, record.tokens_per_minute) == (5, 0)
    async with keys._engine.connect() as conn:
        rows = [dict(r._mapping) for r in (await conn.execute(sa.select(api_keys))).all()]
    # Nothing in the table holds the key: only its lookup prefix and its digest.
    assert rows
    assert not any(key in str(value) for value in rows[0].values())
    assert "digest" not in record.public()
    assert key not in str(record.public())
    other = (await keys.create("acme"))[1]
    assert other != key


async def test_verify_returns_the_key_record(keys: KeyStore) -> None:
    record, key = await keys.create("acme", max_streams=2)
    assert await keys.verify(key) == record


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda k: k[:-1], "malformed"),  # truncated
        (lambda k: k + "x", "malformed"),
        (lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"), "unknown_key"),  # wrong secret
        (lambda k: KEY_PREFIX + "Z" * (len(k) - len(KEY_PREFIX)), "unknown_key"),
        (lambda k: "Bearer " + k, "malformed"),
        (lambda k: "", "malformed"),
    ],
)
async def test_a_wrong_or_truncated_key_is_refused(
    keys: KeyStore, mangle: Callable[[str], str], reason: str
) -> None:
    _, key = await keys.create("acme")
    with pytest.raises(AuthFailure) as failure:
        await keys.verify(mangle(key))
    assert failure.value.reason == reason


async def test_revoked_and_expired_keys_are_refused(keys: KeyStore) -> None:
    record, key = await keys.create("acme")
    await keys.revoke(record.id)
    with pytest.raises(AuthFailure) as revoked:
        await keys.verify(key)
    assert revoked.value.reason == "revoked"

    expiring, old = await keys.create("acme", expires_in_days=1)
    async with keys._engine.begin() as conn:
        await conn.execute(
            api_keys.update()
            .where(api_keys.c.id == expiring.id)
            .values(expires_at=sa.func.datetime("now", "-1 minute"))
        )
    with pytest.raises(AuthFailure) as expired:
        await keys.verify(old)
    assert expired.value.reason == "expired"


async def test_listing_filters_by_tenant_and_revoking_an_unknown_id_is_not_found(
    keys: KeyStore,
) -> None:
    a, _ = await keys.create("a")
    b, _ = await keys.create("b")
    assert [r.id for r in await keys.list()] == [a.id, b.id]
    assert [r.id for r in await keys.list("b")] == [b.id]
    with pytest.raises(NotFound):
        await keys.revoke("key_missing")
    with pytest.raises(InvalidRequest):
        await keys.create("no spaces allowed")


async def test_revocation_takes_effect_within_the_cache_time(
    keys: KeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr("axon.auth.authenticator.time.monotonic", lambda: clock[0])
    auth = Authenticator(AuthSettings(required=True, key_cache_s=10.0), keys)
    record, key = await keys.create("acme")
    assert (await auth.authenticate(f"Bearer {key}")).tenant == "acme"

    await keys.revoke(record.id)
    clock[0] += 5.0  # still cached
    assert (await auth.authenticate(f"Bearer {key}")).tenant == "acme"
    clock[0] += 6.0  # past key_cache_s
    with pytest.raises(AuthFailure) as failure:
        await auth.authenticate(f"Bearer {key}")
    assert failure.value.reason == "revoked"


async def test_the_use_of_a_key_is_recorded(keys: KeyStore) -> None:
    auth = Authenticator(AuthSettings(required=True), keys)
    record, key = await keys.create("acme")
    await auth.authenticate(f"Bearer {key}")
    for task in list(auth._touches):
        await task
    [listed] = await keys.list("acme")
    assert listed.id == record.id
    assert listed.last_used_at is not None


async def test_anonymous_use_only_when_auth_is_not_required(keys: KeyStore) -> None:
    open_auth = Authenticator(AuthSettings(required=False), keys)
    # SDKs insist on sending some key: a placeholder is anonymous use.
    assert (await open_auth.authenticate(None)).anonymous
    assert (await open_auth.authenticate("Bearer unused")).anonymous
    # A key-shaped credential is always checked: a typo must not silently change tenant.
    with pytest.raises(AuthFailure):
        await open_auth.authenticate(f"Bearer {KEY_PREFIX}{'x' * 44}")

    closed = Authenticator(AuthSettings(required=True), keys)
    for header in (None, "Bearer unused", "Basic dXNlcjpwYXNz", "Bearer"):
        with pytest.raises(AuthFailure):
            await closed.authenticate(header)
