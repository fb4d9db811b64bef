"""Real PostgreSQL, Redis and RabbitMQ for tests: isolated names per run, cleanup after,
and a skip locally (but a failure in CI) when a service is not there."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from dataclasses import dataclass
from typing import NoReturn

import pytest

POSTGRES_ADMIN = os.environ.get(
    "AXON_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("AXON_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("AXON_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def missing(reason: str) -> NoReturn:
    """Something a test needs is not here: skip locally, but fail in CI (``CI`` set),
    where every test must run."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run every test)")
    pytest.skip(reason)


def require_port(port: int, name: str) -> None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return
    except OSError:
        missing(f"{name} is not reachable on 127.0.0.1:{port}; start it with scripts/services.sh")


@dataclass
class Namespace:
    """Names one test run uses on the shared services."""

    tag: str

    @property
    def database_url(self) -> str:
        return POSTGRES_ADMIN.rsplit("/", 1)[0] + f"/axon_test_{self.tag}"

    @property
    def redis_prefix(self) -> str:
        return f"axon-test-{self.tag}:"

    @property
    def rabbitmq_prefix(self) -> str:
        return f"axon-test-{self.tag}"

    def env(self) -> dict[str, str]:
        return {
            "AXON_STORE__URL": self.database_url,
            "AXON_BACKENDS__REDIS_URL": REDIS_URL,
            "AXON_BACKENDS__REDIS_PREFIX": self.redis_prefix,
            "AXON_BACKENDS__RABBITMQ_URL": RABBITMQ_URL,
            "AXON_BACKENDS__RABBITMQ_PREFIX": self.rabbitmq_prefix,
        }


def new_namespace() -> Namespace:
    for port, name in ((5432, "PostgreSQL"), (6379, "Redis"), (5672, "RabbitMQ")):
        require_port(port, name)
    return Namespace(uuid.uuid4().hex[:10])


async def _cleanup(ns: Namespace, models: list[str]) -> None:
    import aio_pika
    import redis.asyncio as redis
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    client = redis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{ns.redis_prefix}*", count=1000)]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        for model in models:
            for kind in ("jobs", "dead"):
                try:
                    await channel.queue_delete(f"{ns.rabbitmq_prefix}.{kind}.{model}")
                except Exception:
                    channel = await connection.channel()
    admin = create_async_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "axon_test_{ns.tag}" WITH (FORCE)'))
    await admin.dispose()


def cleanup(ns: Namespace, models: list[str]) -> None:
    asyncio.run(_cleanup(ns, models))
