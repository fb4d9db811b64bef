"""The job queue over several broker addresses: it connects to the first that answers, and
after losing its connection reconnects to another, with its consumer still consuming.

Most brokers here are TCP proxies in front of the machine's RabbitMQ, used only as a
client: closing a proxy is, to the queue, a broker that died. The last test kills a node of
a private three-node cluster started for it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import aio_pika
import pytest
from yarl import URL

from axon.core.errors import QueueUnavailable
from axon.core.types import ChatMessage, Job, SamplingParams
from axon.queue.base import Delivery
from axon.queue.rabbitmq import RabbitMQJobQueue
from support.clusters import (
    BlackholeProxy,
    ClusterError,
    ClusterUnavailable,
    RabbitCluster,
    free_port,
)
from support.services import RABBITMQ_URL, missing, require_port

pytestmark = pytest.mark.integration

MODEL = "failover-model"


def broker(port: int) -> str:
    """The machine's broker, as if it listened on ``port``."""
    url = URL(RABBITMQ_URL).with_host("127.0.0.1").with_port(port)
    # aio-pika's pause between reconnect attempts, short so the test is quick.
    return str(url.with_query(reconnect_interval="0.2"))


def job() -> Job:
    return Job(
        request_id=uuid.uuid4().hex,
        model=MODEL,
        messages=[ChatMessage(role="user", content="hello")],
        params=SamplingParams(max_tokens=8),
        deadline=time.time() + 60,
    )


async def take(deliveries: AsyncIterator[Delivery]) -> Delivery:
    return await asyncio.wait_for(anext(deliveries), 10)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    require_port(5672, "RabbitMQ")
    prefix = f"axon-test-{uuid.uuid4().hex[:10]}"
    yield prefix
    connection = await aio_pika.connect(RABBITMQ_URL)
    async with connection:
        channel = await connection.channel()
        for kind in ("jobs", "dead"):
            await channel.queue_delete(f"{prefix}.{kind}.{MODEL}")


def queue_on(urls: list[str], prefix: str) -> RabbitMQJobQueue:
    return RabbitMQJobQueue(urls, prefix=prefix, delivery_limit=3, publish_timeout_s=2.0)


async def test_the_first_broker_that_answers_is_used(prefix: str) -> None:
    dead = broker(free_port())  # nothing listens there
    with BlackholeProxy(5672) as alive:
        queue = queue_on([dead, broker(alive.port)], prefix)
        try:
            await queue.start()
            assert alive.connections == 1
            deliveries = queue.consume(MODEL, prefetch=1)
            sent = job()
            await queue.publish(sent)
            got = await take(deliveries)
            assert got.job == sent
            await got.ack()
            await deliveries.aclose()
        finally:
            await queue.close()


async def test_no_broker_answering_is_queue_unavailable(prefix: str) -> None:
    queue = queue_on([broker(free_port()), broker(free_port())], prefix)
    try:
        with pytest.raises(QueueUnavailable):
            await queue.start()
        with pytest.raises(QueueUnavailable):
            await queue.ping()
    finally:
        await queue.close()


async def test_after_losing_its_broker_the_queue_goes_on_through_another(prefix: str) -> None:
    with BlackholeProxy(5672) as first, BlackholeProxy(5672) as second:
        queue = queue_on([broker(first.port), broker(second.port)], prefix)
        try:
            await queue.start()
            deliveries = queue.consume(MODEL, prefetch=1)
            before = job()
            await queue.publish(before)
            taken = await take(deliveries)
            await taken.ack()
            assert (first.connections, second.connections) == (1, 0)

            # The first broker dies: its connections reset, it accepts no new ones.
            await asyncio.to_thread(first.close)

            after = job()
            deadline = time.monotonic() + 15
            while True:  # publishes fail fast (503) until the connection is back
                try:
                    await queue.publish(after)
                    break
                except QueueUnavailable:
                    assert time.monotonic() < deadline, "never reconnected to the other broker"
                    await asyncio.sleep(0.2)
            # The same consumer, re-registered through the other broker, gets the new job.
            # The first job may come again before it: its ack can die with the connection
            # (at-least-once; the worker's lease makes a second delivery harmless).
            got = await take(deliveries)
            if got.job == before:
                await got.ack()
                got = await take(deliveries)
            assert got.job == after
            await got.ack()
            assert second.connections == 1
            await queue.ping()
            await deliveries.aclose()
        finally:
            await queue.close()


@pytest.fixture
def cluster() -> Iterator[RabbitCluster]:
    try:
        nodes = RabbitCluster(size=3)
        try:
            nodes.__enter__()
        except ClusterError:
            # Nodes booting side by side sometimes fail RabbitMQ's schema check (one joins
            # while the first enables feature flags): one fresh try.
            nodes = RabbitCluster(size=3)
            nodes.__enter__()
    except ClusterUnavailable as exc:
        missing(str(exc))
    try:
        yield nodes
    finally:
        nodes.close()


async def test_a_cluster_node_dying_moves_the_queue_to_the_next_node(
    cluster: RabbitCluster,
) -> None:
    urls = [f"{url}?reconnect_interval=0.2" for url in cluster.urls]
    queue = queue_on(urls, "axon-test")
    try:
        await queue.start()
        deliveries = queue.consume(MODEL, prefetch=1)
        before = job()
        await queue.publish(before)
        taken = await take(deliveries)
        assert taken.job == before
        await taken.ack()

        # Its broker dies; the quorum queue lives on in the two others.
        await asyncio.to_thread(cluster.kill_node, 0)

        after = job()
        deadline = time.monotonic() + 60
        while True:
            try:
                await queue.publish(after)
                break
            except QueueUnavailable:
                assert time.monotonic() < deadline, "never reconnected to another node"
                await asyncio.sleep(0.5)
        got = await asyncio.wait_for(anext(deliveries), 60)
        assert got.job == after
        await got.ack()
        await deliveries.aclose()
    finally:
        await queue.close()
