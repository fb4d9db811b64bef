"""What the worker counts about deliveries: redeliveries and dead letters, over the
in-memory queue and streams with the fake engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from axon.config import StreamSettings
from axon.core.types import EventKind
from axon.observability import metrics
from axon.queue.memory import MemoryJobQueue
from axon.streaming.memory import MemoryTokenStreams
from axon.worker.engines.fake import FakeEngine
from axon.worker.job import JobSettings
from axon.worker.runner import Worker
from support.worker import DELIVERY_LIMIT, MODEL, eventually, make_job

StartWorker = Callable[[], Awaitable[Worker]]


def counted(name: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"model": MODEL}) or 0.0


@pytest.fixture
def queue() -> MemoryJobQueue:
    return MemoryJobQueue(delivery_limit=DELIVERY_LIMIT)


@pytest.fixture
async def start_worker(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> AsyncIterator[StartWorker]:
    workers: list[Worker] = []

    async def start() -> Worker:
        worker = Worker(
            engine=FakeEngine(MODEL, reply_tokens=4),
            queue=queue,
            streams=streams,
            settings=JobSettings(
                stream=StreamSettings(), lease_s=10.0, delivery_limit=DELIVERY_LIMIT
            ),
            capacity=2,
        )
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop(grace_s=1)


async def finished(streams: MemoryTokenStreams, request_id: str) -> EventKind:
    """The kind of the reply's final event, once written."""
    give_up = time.monotonic() + 10
    while not (final := [e.kind for _, e in await streams.read(request_id) if e.final]):
        assert time.monotonic() < give_up, f"no final event on {request_id}"
        await asyncio.sleep(0.01)
    return final[0]


async def test_a_job_delivered_again_counts_one_redelivery(
    start_worker: StartWorker, queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    before = counted("axon_jobs_redelivered_total")
    again, fresh = make_job("handed back once"), make_job("first time")
    await queue.publish(again)
    # A worker took it and handed it back (stopping, or its lease lost).
    deliveries = queue.consume(MODEL, prefetch=1)
    await (await anext(deliveries)).retry()
    await deliveries.aclose()  # type: ignore[attr-defined]
    await queue.publish(fresh)

    await start_worker()

    assert await finished(streams, again.stream) is EventKind.DONE
    assert await finished(streams, fresh.stream) is EventKind.DONE
    assert counted("axon_jobs_redelivered_total") - before == 1


async def test_each_dead_letter_read_is_counted_once(
    start_worker: StartWorker, queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    before = counted("axon_jobs_dead_lettered_total")
    dead = [make_job("poison one"), make_job("poison two")]
    for job in dead:
        await queue.publish(job)
    deliveries = queue.consume(MODEL, prefetch=2)
    for _ in dead:
        await (await anext(deliveries)).reject()
    await deliveries.aclose()  # type: ignore[attr-defined]

    await start_worker()

    for job in dead:
        assert await finished(streams, job.stream) is EventKind.ERROR
    await eventually(lambda: counted("axon_jobs_dead_lettered_total") - before >= 2)
    assert counted("axon_jobs_dead_lettered_total") - before == 2
