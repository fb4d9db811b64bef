"""The queue gauges: depth and consumers per model from the queue, kept as they were when a
read fails or hangs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from uuid import uuid4

import pytest

from axon.core.errors import QueueUnavailable
from axon.core.types import ChatMessage, Job, SamplingParams
from axon.observability import metrics
from axon.queue.base import Delivery
from axon.queue.memory import MemoryJobQueue
from axon.sessions import queue_gauges
from axon.sessions.queue_gauges import QueueGauges


def make_job(model: str) -> Job:
    return Job(
        request_id=uuid4().hex,
        model=model,
        messages=[ChatMessage(role="user", content="hello")],
        params=SamplingParams(max_tokens=8),
        deadline=time.time() + 60,
    )


def gauges(model: str) -> tuple[float | None, float | None]:
    """(depth, consumers) as exported; None while never set."""
    labels = {"model": model}
    return (
        metrics.REGISTRY.get_sample_value("axon_queue_depth_jobs", labels),
        metrics.REGISTRY.get_sample_value("axon_queue_consumers", labels),
    )


async def become(model: str, expected: tuple[float, float]) -> None:
    deadline = time.monotonic() + 5
    while gauges(model) != expected:
        assert time.monotonic() < deadline, f"gauges {gauges(model)}, expected {expected}"
        await asyncio.sleep(0.01)


@pytest.fixture
def models() -> tuple[str, str]:
    # The registry is the process's: names of their own keep tests apart.
    tag = uuid4().hex[:8]
    return f"gauges-a-{tag}", f"gauges-b-{tag}"


@contextlib.asynccontextmanager
async def running(refresher: QueueGauges) -> AsyncIterator[None]:
    task = asyncio.create_task(refresher.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_the_gauges_follow_each_models_queue(models: tuple[str, str]) -> None:
    a, b = models
    queue = MemoryJobQueue()
    for _ in range(3):
        await queue.publish(make_job(a))

    async with running(QueueGauges(queue, [a, b], interval_s=0.01)):
        await become(a, (3, 0))
        await become(b, (0, 0))

        deliveries = queue.consume(a, prefetch=1)
        delivery: Delivery = await anext(deliveries)
        await become(a, (2, 1))  # one job taken by the one consumer now attached

        await delivery.ack()
        await deliveries.aclose()  # type: ignore[attr-defined]
        await become(a, (2, 0))
    assert gauges(b) == (0, 0)


class FlakyQueue(MemoryJobQueue):
    """Answers until ``broken``; then depth fails and consumers hangs."""

    def __init__(self) -> None:
        super().__init__()
        self.broken = False

    async def depth(self, model: str) -> int:
        if self.broken:
            raise QueueUnavailable("cannot read the queue depth from RabbitMQ")
        return await super().depth(model)

    async def consumers(self, model: str) -> int:
        if self.broken:
            await asyncio.Event().wait()
        return await super().consumers(model)


async def test_a_failed_or_hung_read_keeps_the_last_value(
    models: tuple[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    a, _ = models
    monkeypatch.setattr(queue_gauges, "READ_TIMEOUT_S", 0.05)
    queue = FlakyQueue()
    await queue.publish(make_job(a))
    refresher = QueueGauges(queue, [a])
    await refresher.refresh()
    assert gauges(a) == (1, 0)

    queue.broken = True
    await queue.publish(make_job(a))
    with caplog.at_level(logging.DEBUG, logger=queue_gauges.__name__):
        await refresher.refresh()  # returns: the hung read is given up on

    assert gauges(a) == (1, 0)  # not 0: a broker away is not an empty queue
    assert {getattr(r, "gauge", None) for r in caplog.records} == {"depth", "consumers"}

    queue.broken = False
    await refresher.refresh()
    assert gauges(a) == (2, 0)
