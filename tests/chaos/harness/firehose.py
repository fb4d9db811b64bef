"""Exact copies of the jobs published to a private broker, through RabbitMQ's firehose
tracer, so that a scenario can publish one of them again (the same job delivered twice).
Only ever switched on for a private broker: on a shared one it would copy everyone's
messages."""

from __future__ import annotations

import asyncio
import json

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from support.clusters import RabbitCluster

TRACE_EXCHANGE = "amq.rabbitmq.trace"


class Firehose:
    def __init__(self, rabbitmq: RabbitCluster, jobs_queue: str) -> None:
        self._rabbitmq = rabbitmq
        self._queue = jobs_queue
        self._connection: AbstractRobustConnection | None = None
        #: Job bodies by request id, exactly as the session manager published them.
        self.jobs: dict[str, bytes] = {}

    async def start(self) -> None:
        await asyncio.to_thread(self._rabbitmq.ctl, 0, "trace_on")
        self._connection = await aio_pika.connect_robust(self._rabbitmq.url(0))
        channel = await self._connection.channel()
        copies = await channel.declare_queue(exclusive=True, auto_delete=True)
        # Publishes to the default exchange are traced as "publish." (an empty name).
        await copies.bind(TRACE_EXCHANGE, routing_key="publish.#")
        await copies.consume(self._copy, no_ack=True)

    async def _copy(self, message: AbstractIncomingMessage) -> None:
        routing_keys = (message.headers or {}).get("routing_keys") or []
        if self._queue not in [str(k) for k in routing_keys]:  # type: ignore[union-attr]
            return
        try:
            request_id = json.loads(message.body)["request_id"]
        except (ValueError, KeyError):
            return
        # The first copy is the session manager's; later ones are this suite's own.
        self.jobs.setdefault(str(request_id), message.body)

    async def publish_again(self, request_id: str) -> bool:
        """Publish the job of ``request_id`` again, as the session manager did."""
        body = self.jobs.get(request_id)
        if body is None or self._connection is None:
            return False
        traceparent = json.loads(body).get("traceparent")
        channel = await self._connection.channel(publisher_confirms=True)
        try:
            await channel.default_exchange.publish(
                aio_pika.Message(
                    body,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    message_id=request_id,
                    headers={"traceparent": traceparent} if traceparent else None,
                ),
                routing_key=self._queue,
                mandatory=True,
            )
        finally:
            await channel.close()
        return True

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
