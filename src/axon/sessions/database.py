"""Reaching the store's database: the engine (pooled, pre-pinged, libpq-style multi-host
URLs), the one place where its failures are sorted (a failover, a restart or contention
becomes the retryable ``StoreUnavailable``), retries of idempotent calls, and creating the
database."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from axon.core.errors import StoreUnavailable
from axon.observability import metrics, tracing

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: SQLSTATEs after which the same call may well succeed in a moment, on this server or on
#: the next primary: a failover, a restart or contention, not a fault of the request.
_TRANSIENT_SQLSTATES = frozenset(
    {
        "25006",  # read_only_sql_transaction: a standby, or a primary being demoted
        "40001",  # serialization_failure (also a standby's query cancelled by recovery)
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now: starting up, shutting down
    }
)
#: After these the server cannot serve this connection again: it is read-only or going
#: away. SQLAlchemy is told they are disconnects, so it drops the pool's connections and
#: the next ones find the primary (through the host list, or DNS after a failover).
_RECONNECT_SQLSTATES = frozenset({"25006", "57P01", "57P02", "57P03"})

#: Pauses before the second and the third attempt of a store call that failed on a
#: transient error: enough for the pool to reconnect to a primary that is back (or newly
#: promoted), short enough that a request that then succeeds barely notices.
_RETRY_PAUSES_S = (0.1, 0.5)

# ``scheme://[user[:password]@]host1[:port1],host2[:port2]/...``: libpq's multi-host form.
_MULTIHOST = re.compile(r"^(?P<head>[^:/?#]+://(?:[^@/?#]*@)?)(?P<hosts>[^/?#]*)(?P<tail>.*)$")


def ensure_sqlite_dir(url: str) -> None:
    """Create the folder of a SQLite file URL, so a fresh data directory just works."""
    path = url.split(":///", 1)[-1] if url.startswith("sqlite") else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def engine_url(url: str) -> str:
    """``url`` in a form SQLAlchemy parses. A PostgreSQL URL may list several hosts the
    libpq way (``postgresql+asyncpg://u@h1:5432,h2:5432/db?target_session_attrs=read-write``),
    which SQLAlchemy cannot read; they become the repeated ``host`` query parameters that
    its asyncpg dialect hands to asyncpg. Other URLs are returned as they are."""
    match = _MULTIHOST.match(url) if url.startswith("postgresql") else None
    if match is None or "," not in match["hosts"]:
        return url
    # The dialect wants a port on every host, or on none; libpq's default is 5432.
    hosts = [h if ":" in h else f"{h}:5432" for h in match["hosts"].split(",") if h]
    path, _, query = match["tail"].partition("?")
    params = "&".join([*(f"host={host}" for host in hosts), *([query] if query else [])])
    return f"{match['head']}{path or '/'}?{params}"


def make_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """Build the async engine for ``url``. PostgreSQL URLs may name several hosts
    (``postgresql+asyncpg://u@a:5432,b:5432/db?target_session_attrs=read-write``, or
    ``?host=a:5432&host=b:5432&...``), which asyncpg tries in turn until one accepts
    writes, so a Multi-AZ failover only costs a reconnect."""
    url = engine_url(url)
    if url.startswith("sqlite"):
        ensure_sqlite_dir(url)
        # hide_parameters: a failed statement's message must not carry user text (message
        # content) into error logs.
        engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @sa.event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            # WAL lets readers proceed while a turn is written; foreign keys make
            # DELETE of a session cascade to its messages.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        tracing.instrument_engine(engine.sync_engine)
        return engine
    engine = create_async_engine(
        url,
        hide_parameters=True,
        pool_size=pool_size,
        # A connection the database dropped (failover, idle timeout) is detected
        # before use instead of failing the request that drew it.
        pool_pre_ping=True,
        pool_recycle=1800,
    )

    @sa.event.listens_for(engine.sync_engine, "handle_error")
    def _server_gone(context: sa.engine.ExceptionContext) -> None:
        if _sqlstate(context.original_exception) in _RECONNECT_SQLSTATES:
            context.is_disconnect = True

    tracing.instrument_engine(engine.sync_engine)
    return engine


def _sqlstate(error: BaseException) -> str | None:
    code = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
    return code if isinstance(code, str) else None


def _causes(error: BaseException) -> Iterator[BaseException]:
    """``error``, the driver error SQLAlchemy wrapped in it, and what each was raised from."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (getattr(current, "orig", None), current.__cause__):
            if isinstance(inner, BaseException):
                pending.append(inner)


def _no_writable_host(error: BaseException) -> bool:
    """asyncpg reached servers but none that takes writes (``target_session_attrs``): only
    a standby answers, as between a primary's death and its standby's promotion."""
    try:
        from asyncpg.exceptions import (  # type: ignore[import-untyped]
            TargetServerAttributeNotMatched,
        )
    except ImportError:  # SQLite only
        return False
    return isinstance(error, TargetServerAttributeNotMatched)


def is_transient(error: BaseException) -> bool:
    """Whether a store failure may pass on its own: the server cannot be reached, lost the
    connection, is starting, stopping or read-only (a failover), a transaction lost a
    serialization race, or the pool is exhausted. The caller gets a retryable 503, never a
    500. On SQLite every ``OperationalError`` counts (a locked or unreadable file)."""
    for cause in _causes(error):
        if isinstance(cause, OSError | OperationalError | sa.exc.TimeoutError):
            return True
        if isinstance(cause, DBAPIError) and cause.connection_invalidated:
            return True
        code = _sqlstate(cause)
        if code is not None and (code in _TRANSIENT_SQLSTATES or code.startswith("08")):
            return True
        if _no_writable_host(cause):
            return True
    return False


def _retried(
    call: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Run a store call again after ``StoreUnavailable``, twice at most, after a short
    pause: a failover or a lost connection then costs a request a moment, not an error.
    Only for calls that are safe to repeat: reads, and writes keyed by ids fixed before the
    first attempt (a repeated insert finds its own row). Not after a timeout, which has
    already made the caller wait long enough. Each call is measured, retries included
    (``axon_store_operation_duration_seconds``, ``axon_store_errors_total``)."""
    operation = call.__name__.lstrip("_")
    duration = metrics.STORE_DURATION.labels(operation)

    @functools.wraps(call)
    async def measured(*args: P.args, **kwargs: P.kwargs) -> T:
        started = time.perf_counter()
        try:
            return await attempts(*args, **kwargs)
        except StoreUnavailable:
            metrics.STORE_ERRORS.labels(operation).inc()
            raise
        finally:
            duration.observe(time.perf_counter() - started)

    async def attempts(*args: P.args, **kwargs: P.kwargs) -> T:
        for pause in _RETRY_PAUSES_S:
            try:
                return await call(*args, **kwargs)
            except StoreUnavailable as exc:
                if isinstance(exc.__cause__, TimeoutError | sa.exc.TimeoutError):
                    raise
                log.warning(
                    "session store call failed; trying again",
                    extra={"call": call.__name__, "error": str(exc)},
                )
            await asyncio.sleep(pause)
        return await call(*args, **kwargs)

    return measured


def aware(value: datetime) -> datetime:
    """``value`` with its time zone: SQLite returns naive datetimes even for
    timezone-aware columns."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@asynccontextmanager
async def transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """One transaction. The one place where store errors are sorted: a failure that may pass
    on its own (``is_transient``) becomes the retryable ``StoreUnavailable``."""
    try:
        async with engine.begin() as conn:
            yield conn
    except (DBAPIError, OSError, sa.exc.TimeoutError) as exc:
        if not is_transient(exc):
            raise
        raise StoreUnavailable(f"the session store is unavailable: {type(exc).__name__}") from exc


async def ensure_database(url: str) -> None:
    """Create the PostgreSQL database ``url`` names if it does not exist (SQLite files are
    created on first use). Connects to the server's ``postgres`` database to do so."""
    parsed = sa.make_url(engine_url(url))
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return
    admin = create_async_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            exists = await conn.scalar(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :name"),
                {"name": parsed.database},
            )
            if not exists:
                quoted = admin.dialect.identifier_preparer.quote(parsed.database)
                await conn.execute(sa.text(f"CREATE DATABASE {quoted}"))
    finally:
        await admin.dispose()
