"""The job queue contract, run over every backend: delivery, bounded prefetch, retry with a
delivery count, the delivery limit and dead letters. RabbitMQ-only tests at the end cover the
wire format and a broker that is down."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from uuid import uuid4

import aio_pika
import pytest

from axon.core.errors import QueueUnavailable
from axon.core.types import ChatMessage, Job, SamplingParams
from axon.queue.base import Delivery, JobQueue
from axon.queue.rabbitmq import RabbitMQJobQueue
from axon.queue.rabbitmq import _attempt as rabbitmq_attempt

TIMEOUT_S = 5.0


def make_job(model: str, traceparent: str | None = None) -> Job:
    return Job(
        request_id=uuid4().hex,
        model=model,
        messages=[ChatMessage(role="user", content="hello")],
        params=SamplingParams(max_tokens=8),
        deadline=time.time() + 60,
        traceparent=traceparent,
    )


async def take(deliveries: AsyncIterator[Delivery]) -> Delivery:
    return await asyncio.wait_for(anext(deliveries), TIMEOUT_S)


async def nothing_within(
    deliveries: AsyncIterator[Delivery], seconds: float
) -> asyncio.Task[Delivery]:
    """Start waiting for the next delivery and check none arrives in time; the caller awaits
    the returned task once something should have arrived."""
    waiting = asyncio.ensure_future(anext(deliveries))
    done, _ = await asyncio.wait({waiting}, timeout=seconds)
    assert not done, "a delivery arrived that should not have"
    return waiting


async def stop(waiting: asyncio.Task[Delivery]) -> None:
    """Stop waiting for a delivery; that also ends the iterator it was waiting on."""
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
        await waiting


async def test_published_job_is_consumed(job_queue: JobQueue, model: str) -> None:
    job = make_job(model)
    await job_queue.publish(job)

    deliveries = job_queue.consume(model, prefetch=1)
    delivery = await take(deliveries)

    assert delivery.job == job
    assert delivery.attempt == 1
    await delivery.ack()
    await deliveries.aclose()


async def test_prefetch_bounds_unacknowledged_deliveries(job_queue: JobQueue, model: str) -> None:
    jobs = [make_job(model) for _ in range(3)]
    for job in jobs:
        await job_queue.publish(job)

    deliveries = job_queue.consume(model, prefetch=2)
    first, second = await take(deliveries), await take(deliveries)
    third = await nothing_within(deliveries, 0.5)

    await first.ack()
    last = await asyncio.wait_for(third, TIMEOUT_S)

    assert {d.job.request_id for d in (first, second, last)} == {j.request_id for j in jobs}
    await second.ack()
    await last.ack()
    await deliveries.aclose()


async def test_retry_redelivers_with_the_next_attempt(job_queue: JobQueue, model: str) -> None:
    job = make_job(model)
    await job_queue.publish(job)
    deliveries = job_queue.consume(model, prefetch=1)

    first = await take(deliveries)
    await first.retry()
    again = await take(deliveries)

    assert again.job == job
    assert (first.attempt, again.attempt) == (1, 2)
    await again.ack()
    await deliveries.aclose()


async def test_delivery_limit_dead_letters_the_job(
    job_queue: JobQueue, model: str, delivery_limit: int
) -> None:
    job = make_job(model)
    await job_queue.publish(job)
    deliveries = job_queue.consume(model, prefetch=1)

    for attempt in range(1, delivery_limit + 1):
        delivery = await take(deliveries)
        assert delivery.attempt == attempt
        await delivery.retry()
    await stop(await nothing_within(deliveries, 0.3))

    dead_letters = job_queue.dead_letters(model)
    dead = await take(dead_letters)
    assert dead.job == job
    assert dead.attempt == delivery_limit
    await dead.ack()
    await dead_letters.aclose()


async def test_reject_dead_letters_at_once(job_queue: JobQueue, model: str) -> None:
    job = make_job(model)
    await job_queue.publish(job)
    deliveries = job_queue.consume(model, prefetch=1)

    await (await take(deliveries)).reject()
    dead_letters = job_queue.dead_letters(model)
    dead = await take(dead_letters)

    assert dead.job == job
    await dead.ack()
    await stop(await nothing_within(deliveries, 0.3))
    await dead_letters.aclose()


async def consumers_become(job_queue: JobQueue, model: str, expected: int) -> None:
    """Wait until the queue reports ``expected`` consumers (a broker settles a cancelled
    consumer just after its channel closes); fail if it never does."""
    deadline = time.monotonic() + TIMEOUT_S
    while (found := await job_queue.consumers(model)) != expected:
        assert time.monotonic() < deadline, f"{found} consumers, expected {expected}"
        await asyncio.sleep(0.05)


async def test_consumers_counts_the_attached_consumers(job_queue: JobQueue, model: str) -> None:
    assert await job_queue.consumers(model) == 0
    await job_queue.publish(make_job(model))

    deliveries = job_queue.consume(model, prefetch=1)
    delivery = await take(deliveries)  # attached for as long as it is iterated
    assert await job_queue.consumers(model) == 1
    assert await job_queue.depth(model) == 0  # the one job is out, not waiting

    await delivery.ack()
    await deliveries.aclose()
    await consumers_become(job_queue, model, 0)


# --- RabbitMQ only -------------------------------------------------------------------------


@pytest.mark.integration
async def test_rabbitmq_message_format(rabbitmq_url: str, rabbitmq_prefix: str, model: str) -> None:
    queue = RabbitMQJobQueue(
        rabbitmq_url, prefix=rabbitmq_prefix, delivery_limit=3, publish_timeout_s=5.0
    )
    job = make_job(model, traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    await queue.publish(job)  # connects on first use
    await queue.close()

    connection = await aio_pika.connect(rabbitmq_url)
    try:
        channel = await connection.channel()
        raw = await channel.get_queue(queue.jobs_queue(model), ensure=False)
        message = await raw.get(timeout=TIMEOUT_S)
        assert Job.model_validate_json(message.body) == job
        assert message.content_type == "application/json"
        assert message.message_id == job.request_id
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert message.headers["traceparent"] == job.traceparent
        await message.ack()
    finally:
        await connection.close()


@pytest.mark.integration
async def test_rabbitmq_job_of_a_vanished_consumer_is_redelivered(
    rabbitmq_url: str, rabbitmq_prefix: str, model: str
) -> None:
    queue = RabbitMQJobQueue(
        rabbitmq_url, prefix=rabbitmq_prefix, delivery_limit=3, publish_timeout_s=5.0
    )
    try:
        job = make_job(model)
        await queue.publish(job)
        dying = queue.consume(model, prefetch=1)
        assert (await take(dying)).attempt == 1
        await dying.aclose()  # its channel closes with the job unacknowledged

        survivor = queue.consume(model, prefetch=1)
        again = await take(survivor)
        assert (again.job, again.attempt) == (job, 2)
        await again.ack()
        await survivor.aclose()
    finally:
        await queue.close()


@pytest.mark.integration
async def test_rabbitmq_consumer_keeps_going_after_a_connection_loss(
    rabbitmq_url: str, rabbitmq_prefix: str, model: str
) -> None:
    # A short reconnect interval (a URL parameter of aio-pika) keeps the test quick.
    queue = RabbitMQJobQueue(
        f"{rabbitmq_url}?reconnect_interval=0.2",
        prefix=rabbitmq_prefix,
        delivery_limit=3,
        publish_timeout_s=2.0,
    )
    try:
        await queue.start()
        deliveries = queue.consume(model, prefetch=1)
        first = make_job(model)
        await queue.publish(first)
        taken = await take(deliveries)

        # Drop the TCP connection under the robust connection, as a broker failover does.
        assert queue._connection is not None
        assert queue._connection.transport is not None
        await queue._connection.transport.connection.close(ConnectionError("simulated"))
        await taken.ack()  # too late: the broker has requeued it; this must not raise

        second = make_job(model)
        deadline = time.monotonic() + 10
        while True:  # publishes fail fast (503) until the connection is back
            try:
                await queue.publish(second)
                break
            except QueueUnavailable:
                assert time.monotonic() < deadline, "never reconnected"
                await asyncio.sleep(0.2)
        got = []
        for _ in range(2):  # prefetch is 1: ack each before the next can come
            got.append(await take(deliveries))
            await got[-1].ack()

        assert [(d.job, d.attempt) for d in got] == [(first, 2), (second, 1)]
        await deliveries.aclose()
    finally:
        await queue.close()


@pytest.mark.parametrize(
    ("headers", "redelivered", "attempt"),
    [
        ({}, False, 1),
        ({"x-delivery-count": 2}, True, 3),
        # Returned when its consumer's connection died, which recent brokers leave out of
        # x-delivery-count (3.x counts every return, so a live broker may not show this).
        ({}, True, 2),
    ],
)
def test_rabbitmq_attempt_counts_redeliveries_the_broker_leaves_uncounted(
    headers: dict[str, int], redelivered: bool, attempt: int
) -> None:
    message = SimpleNamespace(headers=headers, redelivered=redelivered)
    assert rabbitmq_attempt(message) == attempt  # type: ignore[arg-type]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: a hung broker."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


@pytest.mark.parametrize("broker", ["closed port", "silent"])
async def test_rabbitmq_down_publish_fails_fast(broker: str, silent_port: int) -> None:
    port = 1 if broker == "closed port" else silent_port
    queue = RabbitMQJobQueue(
        f"amqp://guest:guest@127.0.0.1:{port}/",
        prefix="unused",
        delivery_limit=3,
        publish_timeout_s=1.0,
    )
    started = time.monotonic()
    with pytest.raises(QueueUnavailable):
        await queue.publish(make_job("m"))
    assert time.monotonic() - started < 1.5
    with pytest.raises(QueueUnavailable):
        await queue.ping()
    await queue.close()
