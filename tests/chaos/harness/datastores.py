"""The datastores one scenario runs on: the machine's shared PostgreSQL, Redis and RabbitMQ
under a fresh namespace, with any of the three replaced by private ones the scenario may
crash, pause, cut off or fail over: a single Redis (append-only, no replica) or a primary
and a replica under three Sentinels; a single PostgreSQL or a primary and a synchronous
standby; a RabbitMQ of one node or a cluster, optionally behind a proxy for some roles."""

from __future__ import annotations

import contextlib
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
from aio_pika.exceptions import ChannelClosed

from support.clusters import (
    BlackholeProxy,
    Cluster,
    ClusterUnavailable,
    PostgresPair,
    RabbitCluster,
    RedisSentinelGroup,
)
from support.services import Namespace, cleanup, missing, new_namespace

from .postgres import PrivatePostgres
from .redis_server import PrivateRedis
from .zones import Zones

#: The model every chaos stack serves (the fake engine answers under the default name).
MODEL = "smollm2-135m-instruct"
#: The database the private PostgreSQL servers hold Axon's tables in.
DATABASE = "axon"


@dataclass(frozen=True)
class Private:
    """Which datastores a scenario runs privately, and how."""

    redis: bool = False
    #: A primary and a replica watched by three Sentinels, instead of a single Redis.
    redis_sentinels: bool = False
    postgres: bool = False
    #: A primary and a synchronous streaming standby, instead of a single server.
    postgres_standby: bool = False
    rabbitmq: bool = False
    rabbitmq_nodes: int = 1
    #: Roles ("worker", ...) that reach RabbitMQ (node 1) through a ``BlackholeProxy``.
    rabbitmq_proxy: tuple[str, ...] = ()
    #: Two availability zones, "a" and "b": see ``zones.py``.
    zones: bool = False


@dataclass
class Datastores:
    ns: Namespace
    redis: PrivateRedis | None = None
    sentinels: RedisSentinelGroup | None = None
    postgres: PrivatePostgres | None = None
    pair: PostgresPair | None = None
    rabbitmq: RabbitCluster | None = None
    proxy: BlackholeProxy | None = None
    proxied: tuple[str, ...] = ()
    zones: Zones | None = None
    started: dict[str, float] = field(default_factory=dict)

    @classmethod
    def start(cls, private: Private) -> Datastores:
        ns = new_namespace()
        stores = cls(ns, proxied=private.rabbitmq_proxy)
        try:
            if private.redis_sentinels:
                stores.sentinels = RedisSentinelGroup(master_name=f"axon-{ns.tag}")
            elif private.redis:
                stores.redis = PrivateRedis()
            if private.postgres_standby:
                stores.pair = PostgresPair(database=DATABASE, synchronous=True)
            elif private.postgres:
                stores.postgres = PrivatePostgres(DATABASE)
            if private.rabbitmq or private.rabbitmq_proxy:
                stores.rabbitmq = RabbitCluster(private.rabbitmq_nodes)
            # Side by side: a RabbitMQ cluster's boot is most of the wait, and mostly idle.
            clusters = stores.clusters()
            with ThreadPoolExecutor(max(1, len(clusters))) as pool:
                for name, cluster in zip(
                    clusters, pool.map(lambda c: c.start(), clusters.values()), strict=True
                ):
                    stores.started[name] = cluster.startup_seconds
            if stores.rabbitmq is not None and private.rabbitmq_proxy:
                stores.proxy = BlackholeProxy(stores.rabbitmq.amqp_ports[0])
                stores.proxy.start()
            if private.zones:
                stores.zones = Zones(stores)
        except ClusterUnavailable as exc:
            stores.stop()
            missing(str(exc))
        except BaseException:
            stores.stop()
            raise
        return stores

    def clusters(self) -> dict[str, Cluster]:
        found: dict[str, Cluster | None] = {
            "redis": self.redis,
            "sentinels": self.sentinels,
            "postgres": self.postgres,
            "pair": self.pair,
            "rabbitmq": self.rabbitmq,
        }
        return {name: c for name, c in found.items() if c is not None}

    @property
    def store_url(self) -> str:
        """The store, as the checker reaches it (SQLAlchemy's spelling of several hosts)."""
        if self.pair is not None:
            return self.pair.sqlalchemy_url
        return self.postgres.url if self.postgres else self.ns.database_url

    @property
    def amqp_urls(self) -> list[str]:
        if self.rabbitmq is not None:
            return self.rabbitmq.urls
        return [self.ns.env()["AXON_BACKENDS__RABBITMQ_URL"]]

    def env(self) -> dict[str, str]:
        """What every process of the stack is given."""
        env = {
            **self.ns.env(),
            "AXON_BACKENDS__QUEUE": "rabbitmq",
            "AXON_BACKENDS__STREAMS": "redis",
            "AXON_BACKENDS__CACHE": "redis",
            "AXON_BACKENDS__RATELIMIT": "redis",
            "AXON_STORE__URL": self.store_url,
            "AXON_BACKENDS__RABBITMQ_URL": self.amqp_urls[0],
        }
        if self.pair is not None:
            # The libpq spelling an operator would write: both hosts, the writable one wins.
            env["AXON_STORE__URL"] = (
                f"postgresql+asyncpg://postgres@127.0.0.1:{self.pair.primary_port},"
                f"127.0.0.1:{self.pair.standby_port}/{DATABASE}?target_session_attrs=read-write"
            )
        if self.rabbitmq is not None and self.rabbitmq.size > 1:
            env["AXON_BACKENDS__RABBITMQ_URLS"] = json.dumps(self.amqp_urls)
        if self.redis is not None:
            env["AXON_BACKENDS__REDIS_URL"] = self.redis.url
        if self.sentinels is not None:
            env["AXON_BACKENDS__REDIS_SENTINELS"] = json.dumps(self.sentinels.sentinel_addresses)
            env["AXON_BACKENDS__REDIS_SENTINEL_MASTER"] = self.sentinels.master_name
            # Only the database is taken from the URL; the host is the first primary, so a
            # connection that ignored the Sentinels would fail with it rather than succeed
            # on the machine's shared Redis.
            env["AXON_BACKENDS__REDIS_URL"] = (
                f"redis://127.0.0.1:{self.sentinels.original_primary_port}/0"
            )
        return env

    def member_env(self, role: str, index: int) -> dict[str, str]:
        """What one process of the stack is given besides ``env()``."""
        extra: dict[str, str] = {}
        if self.proxy is not None and role in self.proxied:
            extra["AXON_BACKENDS__RABBITMQ_URL"] = (
                f"amqp://guest:guest@127.0.0.1:{self.proxy.port}/"
            )
        if self.zones is not None:
            extra |= self.zones.member_env(role, index)
        return extra

    def jobs_queue(self) -> str:
        return f"{self.ns.rabbitmq_prefix}.jobs.{MODEL}"

    async def queue_consumers(self) -> int | None:
        """Consumers of the model's job queue, asked of the first node that answers (a
        passive declaration answers the count without creating anything); None when the
        queue or the broker is not there."""
        for url in self.amqp_urls:
            try:
                connection = await aio_pika.connect(url, timeout=10)
            except Exception:
                continue
            async with connection:
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(self.jobs_queue(), passive=True)
                except ChannelClosed:
                    return None
                result = queue.declaration_result
                return int(result.consumer_count or 0) if result is not None else None
        return None

    def logs(self) -> dict[str, Path]:
        """The private datastores' own logs, to keep beside the axon logs."""
        found: dict[str, Path] = {}
        for name, cluster in self.clusters().items():
            found |= {
                log if log.startswith(name) else f"{name}-{log}": path
                for log, path in cluster.logs().items()
            }
        return found

    def keep_logs(self, into: Path) -> None:
        for name, path in self.logs().items():
            with contextlib.suppress(OSError):
                shutil.copy(path, into / f"{name}.log")

    def stop(self) -> None:
        if self.proxy is not None:
            with contextlib.suppress(Exception):
                self.proxy.close()
        for cluster in self.clusters().values():
            with contextlib.suppress(Exception):
                cluster.close()
        # The namespace on the shared services (keys, queues, database), whatever was private.
        cleanup(self.ns, [MODEL])
