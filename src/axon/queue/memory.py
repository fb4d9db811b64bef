"""In-process job queue for the embedded default and unit tests: same semantics as the
RabbitMQ backend (prefetch, redelivery, a backstop delivery limit, dead letters), no
durability."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator

from axon.core.types import Job
from axon.queue.base import BACKSTOP_DELIVERY_LIMIT, Delivery, JobQueue


class _MemoryDelivery(Delivery):
    def __init__(self, queue: MemoryJobQueue, model: str, job: Job, attempt: int) -> None:
        self._queue = queue
        self._model = model
        self.job = job
        self.attempt = attempt
        self._settled = False
        self._slot: asyncio.Semaphore | None = None

    def _settle(self) -> None:
        if self._settled:
            raise RuntimeError("delivery already settled")
        self._settled = True
        if self._slot is not None:
            self._slot.release()

    async def ack(self) -> None:
        self._settle()

    async def retry(self) -> None:
        self._settle()
        self._queue._requeue(self._model, self.job, self.attempt)

    async def reject(self) -> None:
        self._settle()
        self._queue._dead[self._model].put_nowait((self.job, self.attempt))


class MemoryJobQueue(JobQueue):
    """``delivery_limit`` is a backstop, as the broker's is: workers count a job's failed
    attempts themselves and end it with an error before this is reached."""

    def __init__(self, delivery_limit: int = BACKSTOP_DELIVERY_LIMIT) -> None:
        self.delivery_limit = delivery_limit
        self._ready: defaultdict[str, asyncio.Queue[tuple[Job, int]]] = defaultdict(asyncio.Queue)
        self._dead: defaultdict[str, asyncio.Queue[tuple[Job, int]]] = defaultdict(asyncio.Queue)
        self._consumers: defaultdict[str, int] = defaultdict(int)

    def _requeue(self, model: str, job: Job, attempt: int) -> None:
        if attempt >= self.delivery_limit:
            self._dead[model].put_nowait((job, attempt))
        else:
            self._ready[model].put_nowait((job, attempt))

    async def publish(self, job: Job) -> None:
        self._ready[job.model].put_nowait((job, 0))

    def pending(self, model: str) -> int:
        return self._ready[model].qsize()

    async def depth(self, model: str) -> int:
        return self.pending(model)

    async def consumers(self, model: str) -> int:
        return self._consumers[model]

    async def consume(self, model: str, prefetch: int) -> AsyncIterator[Delivery]:
        slots = asyncio.Semaphore(prefetch)
        ready = self._ready[model]
        # Attached from the first wait for a job until the iterator is closed, as a
        # broker's consumer is.
        self._consumers[model] += 1
        try:
            while True:
                await slots.acquire()
                job, attempts = await ready.get()
                delivery = _MemoryDelivery(self, model, job, attempts + 1)
                delivery._slot = slots
                yield delivery
        finally:
            self._consumers[model] -= 1

    async def dead_letters(self, model: str) -> AsyncIterator[Delivery]:
        dead = self._dead[model]
        while True:
            job, attempts = await dead.get()
            yield _MemoryDelivery(self, model, job, attempts)
