"""Job queue on RabbitMQ: one durable quorum queue per model with publisher confirms,
manual acknowledgement, a delivery limit and a dead-letter queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import aclosing, asynccontextmanager, suppress
from typing import Any

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractQueueIterator,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelInvalidStateError
from pydantic import ValidationError
from yarl import URL

from axon.core.errors import QueueUnavailable
from axon.core.types import Job
from axon.queue.base import Delivery, JobQueue

log = logging.getLogger(__name__)

#: Dead letters are read by one small consumer that tells clients; a few in flight is plenty.
_DEAD_LETTER_PREFETCH = 16
#: Pause before a consumer that ended on its own starts over, so an outage is not a busy loop.
_RESUME_DELAY_S = 1.0


class _Unsettled:
    """Deliveries of one consumer not yet settled. Its channel is closed only once they
    are (or a bound passes): closing it earlier would return running jobs to the queue
    while their worker still writes them."""

    def __init__(self) -> None:
        self.count = 0
        self._none = asyncio.Event()
        self._none.set()

    def add(self) -> None:
        self.count += 1
        self._none.clear()

    def done(self) -> None:
        self.count -= 1
        if self.count <= 0:
            self._none.set()

    async def settled(self, within_s: float) -> None:
        with suppress(TimeoutError):
            async with asyncio.timeout(within_s):
                await self._none.wait()


class _RabbitDelivery(Delivery):
    def __init__(
        self, message: AbstractIncomingMessage, job: Job, attempt: int, unsettled: _Unsettled
    ) -> None:
        self._message = message
        self.job = job
        self.attempt = attempt
        self._unsettled = unsettled
        unsettled.add()

    async def ack(self) -> None:
        await self._settle("ack", self._message.ack())

    async def retry(self) -> None:
        # Back to the queue, for any worker. The broker counts this toward its backstop
        # limit; the job's real attempt count lives in its lease.
        await self._settle("retry", self._message.nack(requeue=True))

    async def reject(self) -> None:
        await self._settle("reject", self._message.reject(requeue=False))

    async def _settle(self, action: str, settling: Awaitable[None]) -> None:
        try:
            await settling
        except ChannelInvalidStateError:
            # The channel this came on is gone: the broker has already put the job back
            # in the queue and will deliver it again (the stream lets the next worker
            # continue without a gap), so there is nothing left to settle here.
            log.warning(
                "job delivery not settled: its channel closed, the broker redelivers it",
                extra={"action": action, "request_id": self.job.request_id},
            )
        finally:
            self._unsettled.done()


class _FailoverConnection(aio_pika.RobustConnection):
    """A robust connection to one of several brokers of a cluster.

    aio-pika reconnects to the one URL it was given. This connection moves on to the next
    URL each time a connection is lost or an attempt fails (aio-pika calls
    ``_on_connection_close`` in both cases), so its reconnect loop goes round the cluster
    until a node answers. Everything else is aio-pika's: channels, queue declarations and
    consumers are restored on whichever node that is, as after any reconnect. Connection
    options in the query (``reconnect_interval``, ``fail_fast``) come from the first URL.
    """

    def __init__(self, urls: Sequence[URL], **kwargs: Any) -> None:
        super().__init__(urls[0], **kwargs)
        self._urls = list(urls)
        self._current = 0

    async def _on_connection_close(self, closing: asyncio.Future[Any]) -> None:
        try:
            await super()._on_connection_close(closing)
        finally:
            # After super(), so its log line names the broker that was lost. The reconnect
            # loop has not run yet (no await since it was woken), so it reads the new URL.
            if len(self._urls) > 1 and not self.close_called:
                self._current = (self._current + 1) % len(self._urls)
                self.url = self._urls[self._current]


def _attempt(message: AbstractIncomingMessage) -> int:
    """Which delivery of its job ``message`` is. A quorum queue's x-delivery-count counts
    only the returns its release deems failures, and which those are differs between
    releases: recent ones skip a delivery whose consumer's channel or connection closed, as
    a dead worker's does. The redelivered flag still says so: at least the second delivery."""
    count = message.headers.get("x-delivery-count")
    counted = int(count) + 1 if isinstance(count, int) else 1
    return max(counted, 2) if message.redelivered else counted


def _with_heartbeat(url: URL, heartbeat_s: float | None) -> URL:
    """``url`` asking for AMQP heartbeats every ``heartbeat_s``, unless it sets its own. A
    frozen or partitioned worker stops answering them, and the broker then closes its
    connection and hands its unacknowledged jobs (those it never started too) to the
    others, instead of holding them for as long as the TCP connection looks open."""
    if heartbeat_s is None or "heartbeat" in url.query:
        return url
    return url.update_query(heartbeat=max(1, round(heartbeat_s)))


class RabbitMQJobQueue(JobQueue):
    """Jobs in RabbitMQ quorum queues ``{prefix}.jobs.{model}``, poison jobs in
    ``{prefix}.dead.{model}``.

    The connection is an ``aio_pika.RobustConnection``: after a broker or network
    failure it reconnects in the background and re-declares queues and consumers. A
    ``consume`` iterator therefore keeps yielding after a reconnect (if aio-pika gives up
    waiting for its channel, it opens a new consumer); it ends cleanly, without error, when
    ``close()`` is called. Deliveries received before the loss cannot be settled any
    more (the broker requeued them); settling them logs a warning and does nothing.

    ``start()`` connects eagerly; every other method also connects on first use, so a
    process can start while the broker is down and report it through ``ping()``.

    ``url`` may list the nodes of one cluster: the queue connects to the first that answers
    and, after losing that connection, reconnects to whichever node answers next.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        prefix: str,
        delivery_limit: int,
        publish_timeout_s: float,
        connect_timeout_s: float = 10.0,
        drain_s: float = 60.0,
        heartbeat_s: float | None = None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("RabbitMQJobQueue needs at least one broker URL")
        self._urls = [_with_heartbeat(make_url(u), heartbeat_s) for u in urls]
        self._prefix = prefix
        self._delivery_limit = max(1, delivery_limit)
        self._publish_timeout_s = publish_timeout_s
        self._connect_timeout_s = connect_timeout_s
        # Longest a stopping consumer keeps its channel for deliveries still running.
        self._drain_s = drain_s
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None
        self._inspector: AbstractRobustChannel | None = None
        self._published_to: set[str] = set()
        self._lock = asyncio.Lock()
        self._closed = False

    def jobs_queue(self, model: str) -> str:
        return f"{self._prefix}.jobs.{model}"

    def dead_queue(self, model: str) -> str:
        return f"{self._prefix}.dead.{model}"

    def _jobs_arguments(self, model: str) -> dict[str, Any]:
        return {
            "x-queue-type": "quorum",
            # The broker counts *failed* deliveries (nack with requeue, or a consumer's
            # channel closing with the job unacked) and dead-letters a job once that count
            # exceeds the limit, so allowing N deliveries means a limit of N - 1. Workers
            # count a job's own failures themselves (3.x counts every requeue, 4.x only
            # some), so the deployed limit is a backstop (``BACKSTOP_DELIVERY_LIMIT``).
            "x-delivery-limit": self._delivery_limit - 1,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self.dead_queue(model),
            # Quorum queues dead-letter at-most-once by default: a job is dropped if the
            # dead-letter queue cannot take it at that moment, and the client would never
            # hear about it. at-least-once keeps it in this queue until the dead-letter
            # queue confirms; RabbitMQ (3.10+) honours that only together with
            # reject-publish overflow, because with drop-head a full queue would silently
            # discard jobs it has not yet dead-lettered. With a length limit set by
            # policy, a full queue then refuses publishes, which the gateway turns into 503s.
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    async def _declare(
        self, channel: AbstractChannel, model: str
    ) -> tuple[AbstractQueue, AbstractQueue]:
        """Declare (idempotently) the model's queues; a robust channel declares them again
        after a reconnect. Returns (jobs, dead)."""
        # The dead-letter queue first, so that it exists before anything can be routed there.
        dead = await channel.declare_queue(
            self.dead_queue(model), durable=True, arguments={"x-queue-type": "quorum"}
        )
        jobs = await channel.declare_queue(
            self.jobs_queue(model), durable=True, arguments=self._jobs_arguments(model)
        )
        return jobs, dead

    async def _connect(self) -> AbstractRobustConnection:
        async with self._lock:
            if self._connection is None:
                self._connection = await self._open()
            return self._connection

    async def _open(self) -> AbstractRobustConnection:
        """A connection to the first broker that answers, trying them in the given order."""
        failure: BaseException | None = None
        for first in range(len(self._urls)):
            # The brokers after this one follow in turn, for reconnects.
            order = self._urls[first:] + self._urls[:first]
            # Built by hand rather than with connect_robust so that a failed or cancelled
            # (timed out) first attempt can be closed: otherwise the robust connection
            # keeps reconnecting in the background, one more per attempt.
            connection = _FailoverConnection(
                order, client_properties={"connection_name": f"axon {self._prefix}"}
            )
            try:
                await connection.connect(timeout=self._connect_timeout_s)
            except BaseException as exc:
                with suppress(Exception):
                    await connection.close()
                if not isinstance(exc, CONNECTION_EXCEPTIONS):
                    raise
                failure = exc
                continue
            return connection
        # Never put a URL in the message: it carries the password.
        raise QueueUnavailable("cannot connect to RabbitMQ") from failure

    async def _publisher_channel(self) -> AbstractRobustChannel:
        connection = await self._connect()
        async with self._lock:
            if self._publisher is None:
                # Confirms: publish returns only once the broker has stored the job.
                # on_return_raises: an unroutable job (queue missing) raises, not vanishes.
                self._publisher = await connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
            return self._publisher

    async def _inspector_channel(self) -> AbstractRobustChannel:
        """The channel that reads queue depths and consumers. Not the publisher's: a read
        abandoned at its timeout (load shedding, the gauges) cancels its declaration, and
        the client then closes that channel; publishing must not lose its channel to it."""
        connection = await self._connect()
        async with self._lock:
            # A cancelled read leaves its channel closed: the next read opens another.
            if self._inspector is None or self._inspector.is_closed:
                self._inspector = await connection.channel()
            return self._inspector

    async def start(self) -> None:
        """Connect now and open the publisher channel; raise ``QueueUnavailable`` if the
        broker cannot be reached."""
        try:
            await self._publisher_channel()
        except CONNECTION_EXCEPTIONS as exc:
            raise QueueUnavailable("cannot open a RabbitMQ channel") from exc

    async def _publish(self, job: Job) -> None:
        channel = await self._publisher_channel()
        if job.model not in self._published_to:
            await self._declare(channel, job.model)
            self._published_to.add(job.model)
        message = aio_pika.Message(
            job.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=job.request_id,
            headers={"traceparent": job.traceparent} if job.traceparent else None,
        )
        await channel.default_exchange.publish(
            message, routing_key=self.jobs_queue(job.model), mandatory=True
        )

    async def publish(self, job: Job) -> None:
        try:
            await asyncio.wait_for(self._publish(job), self._publish_timeout_s)
        except QueueUnavailable:
            raise
        except TimeoutError as exc:
            raise QueueUnavailable("RabbitMQ did not confirm the job in time") from exc
        except CONNECTION_EXCEPTIONS as exc:
            # Includes a nack (queue full, reject-publish) and a return (unroutable).
            raise QueueUnavailable(f"RabbitMQ refused the job: {type(exc).__name__}") from exc

    async def _jobs_queue_state(self, model: str, what: str) -> tuple[int, int]:
        """(ready messages, consumers) of ``model``'s jobs queue, as the broker counts them."""
        try:
            channel = await self._inspector_channel()
            # A declaration with the same arguments is idempotent and answers both counts;
            # a passive one would close the channel if the queue did not exist yet.
            jobs, _ = await self._declare(channel, model)
        except CONNECTION_EXCEPTIONS as exc:
            raise QueueUnavailable(f"cannot read the queue {what} from RabbitMQ") from exc
        result = jobs.declaration_result
        if result is None:
            return 0, 0
        return int(result.message_count or 0), int(result.consumer_count or 0)

    async def depth(self, model: str) -> int:
        depth, _ = await self._jobs_queue_state(model, "depth")
        return depth

    async def consumers(self, model: str) -> int:
        _, consumers = await self._jobs_queue_state(model, "consumers")
        return consumers

    @asynccontextmanager
    async def _consumer(
        self, model: str, *, dead: bool, prefetch: int, unsettled: _Unsettled
    ) -> AsyncIterator[AbstractQueueIterator]:
        """A channel of its own (so prefetch applies to this consumer alone). On exit the
        consumer is cancelled first (no new deliveries; buffered ones go back), and the
        channel closes once the deliveries in hand are settled, within a bound, after
        which the broker returns the rest to the queue."""
        connection = await self._connect()
        channel = connection.channel()
        try:
            await channel.initialize()
            await channel.set_qos(prefetch_count=prefetch)
            jobs, dead_letters = await self._declare(channel, model)
            async with (dead_letters if dead else jobs).iterator() as messages:
                yield messages
        except CONNECTION_EXCEPTIONS as exc:
            raise QueueUnavailable("cannot consume from RabbitMQ") from exc
        finally:
            await unsettled.settled(self._drain_s)
            with suppress(*CONNECTION_EXCEPTIONS):
                await channel.close()

    async def _messages(
        self, model: str, *, dead: bool, prefetch: int, unsettled: _Unsettled
    ) -> AsyncGenerator[AbstractIncomingMessage, None]:
        """Messages until ``close()``. aio-pika's iterator survives a reconnect, but gives up
        when the channel is not restored within its own limit (60 s): then start over."""
        while True:
            consumer = self._consumer(model, dead=dead, prefetch=prefetch, unsettled=unsettled)
            async with consumer as messages:
                async for message in messages:
                    yield message
            if self._closed:
                return
            log.warning(
                "job consumer ended while the queue is open; resuming", extra={"model": model}
            )
            await asyncio.sleep(_RESUME_DELAY_S)

    async def _decode(self, message: AbstractIncomingMessage) -> Job | None:
        try:
            return Job.model_validate_json(message.body)
        except ValidationError:
            # It can never run: dead-letter it (a dead letter: drop it). Contents unlogged.
            log.error("rejecting an undecodable job", extra={"message_id": message.message_id})
            await message.reject(requeue=False)
            return None

    async def consume(self, model: str, prefetch: int) -> AsyncIterator[Delivery]:
        # aclosing: when the caller stops iterating, the channel must close now (returning
        # its unacknowledged jobs), not whenever the inner generator is collected.
        unsettled = _Unsettled()
        messages = self._messages(model, dead=False, prefetch=prefetch, unsettled=unsettled)
        async with aclosing(messages):
            async for message in messages:
                if (job := await self._decode(message)) is None:
                    continue
                yield _RabbitDelivery(message, job, _attempt(message), unsettled)

    async def dead_letters(self, model: str) -> AsyncIterator[Delivery]:
        """Dead-lettered jobs. ``attempt`` is the delivery limit when the broker gave up on
        the job, and 1 when a worker rejected it (the broker keeps no count for that).
        ``retry`` puts a dead letter back on the dead-letter queue; ``reject`` drops it."""
        unsettled = _Unsettled()
        dead_letters = self._messages(
            model, dead=True, prefetch=_DEAD_LETTER_PREFETCH, unsettled=unsettled
        )
        async with aclosing(dead_letters) as messages:
            async for message in messages:
                if (job := await self._decode(message)) is None:
                    continue
                reason = message.headers.get("x-first-death-reason")
                attempt = self._delivery_limit if reason == "delivery_limit" else 1
                yield _RabbitDelivery(message, job, attempt, unsettled)

    async def ping(self) -> None:
        try:
            channel = await asyncio.wait_for(self._publisher_channel(), self._publish_timeout_s)
        except TimeoutError as exc:
            raise QueueUnavailable("RabbitMQ did not answer in time") from exc
        except QueueUnavailable:
            raise
        except CONNECTION_EXCEPTIONS as exc:
            raise QueueUnavailable("cannot open a RabbitMQ channel") from exc
        # While the robust connection is reconnecting the channel reports closed.
        if channel.is_closed:
            raise QueueUnavailable("RabbitMQ connection is down")

    async def close(self) -> None:
        self._closed = True
        connection, self._connection, self._publisher = self._connection, None, None
        self._inspector = None
        self._published_to.clear()
        if connection is not None:
            with suppress(*CONNECTION_EXCEPTIONS):
                await connection.close()
