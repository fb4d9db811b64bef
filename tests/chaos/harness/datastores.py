"""The datastores one scenario runs on: the machine's shared PostgreSQL, Redis and RabbitMQ
under a fresh namespace, with any of the three replaced by a private instance the scenario
may crash, pause or cut off."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import aio_pika
from aio_pika.exceptions import ChannelClosed

from support.services import Namespace, cleanup, new_namespace

from .postgres import PrivatePostgres
from .rabbitmq import PrivateRabbitMQ
from .redis_server import PrivateRedis

#: The model every chaos stack serves (the fake engine answers under the default name).
MODEL = "smollm2-135m-instruct"


@dataclass
class Datastores:
    ns: Namespace
    root: Path
    redis: PrivateRedis | None = None
    postgres: PrivatePostgres | None = None
    rabbitmq: PrivateRabbitMQ | None = None

    @classmethod
    def start(cls, *, redis: bool, postgres: bool, rabbitmq: bool) -> Datastores:
        ns = new_namespace()
        # Not under pytest's temporary folder: the datastores run as their own users, who
        # cannot pass through root's private directories.
        root = Path(tempfile.mkdtemp(prefix=f"axon-chaos-{ns.tag}-"))
        root.chmod(0o755)
        stores = cls(ns, root)
        try:
            if redis:
                stores.redis = PrivateRedis(root)
                stores.redis.start()
            if postgres:
                stores.postgres = PrivatePostgres(root)
                stores.postgres.start()
            if rabbitmq:
                stores.rabbitmq = PrivateRabbitMQ(root)
                stores.rabbitmq.start()
        except BaseException:
            stores.stop()
            raise
        return stores

    @property
    def store_url(self) -> str:
        return self.postgres.url if self.postgres else self.ns.database_url

    @property
    def amqp_url(self) -> str:
        return self.rabbitmq.url if self.rabbitmq else self.ns.env()["AXON_BACKENDS__RABBITMQ_URL"]

    def env(self) -> dict[str, str]:
        env = {
            **self.ns.env(),
            "AXON_BACKENDS__QUEUE": "rabbitmq",
            "AXON_BACKENDS__STREAMS": "redis",
            "AXON_BACKENDS__CACHE": "redis",
            "AXON_BACKENDS__RATELIMIT": "redis",
            "AXON_STORE__URL": self.store_url,
            "AXON_BACKENDS__RABBITMQ_URL": self.amqp_url,
        }
        if self.redis is not None:
            env["AXON_BACKENDS__REDIS_URL"] = self.redis.url
        return env

    def jobs_queue(self) -> str:
        return f"{self.ns.rabbitmq_prefix}.jobs.{MODEL}"

    async def queue_consumers(self) -> int | None:
        """Consumers of the model's job queue (a passive declaration answers the count
        without creating anything); None when the queue or the broker is not there."""
        try:
            connection = await aio_pika.connect(self.amqp_url, timeout=10)
        except Exception:
            return None
        async with connection:
            channel = await connection.channel()
            try:
                queue = await channel.declare_queue(self.jobs_queue(), passive=True)
            except ChannelClosed:
                return None
            result = queue.declaration_result
            return int(result.consumer_count or 0) if result is not None else None

    def logs(self) -> dict[str, Path]:
        """The private datastores' own logs, to keep beside the axon logs."""
        found: dict[str, Path] = {}
        if self.redis is not None:
            found["redis"] = self.redis.dir / "redis.log"
        if self.postgres is not None:
            found["postgres"] = self.postgres.dir / "postgres.log"
        if self.rabbitmq is not None:
            found["rabbitmq"] = self.rabbitmq.dir / "server.log"
            found["rabbitmq-node"] = self.rabbitmq.dir / "log" / f"{self.rabbitmq.node}.log"
        return found

    def keep_logs(self, into: Path) -> None:
        for name, path in self.logs().items():
            with contextlib.suppress(OSError):
                shutil.copy(path, into / f"{name}.log")

    def stop(self) -> None:
        for store in (self.rabbitmq, self.redis, self.postgres):
            if store is not None:
                with contextlib.suppress(Exception):
                    store.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        # The namespace on the shared services (keys, queues, database), whatever was private.
        cleanup(self.ns, [MODEL])
