"""Queue depth and consumers per model, read from the broker every few seconds and exported
as gauges (every session manager reads them; dashboards aggregate with max)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from axon.core.errors import AxonError
from axon.observability import metrics
from axon.queue.base import JobQueue

log = logging.getLogger(__name__)

#: Longest one read may take: a broker that hangs must not hold up the other reads.
READ_TIMEOUT_S = 2.0


class QueueGauges:
    """Refreshes ``axon_queue_depth_jobs`` and ``axon_queue_consumers`` for ``models``.

    A read that fails or times out leaves its gauge at the last value read: publish errors
    and the broker's own alerts report a broker that is away, and a gauge dropping to 0
    would say "nothing waiting" or "no worker" instead.
    """

    def __init__(self, queue: JobQueue, models: Sequence[str], interval_s: float = 5.0) -> None:
        self.queue = queue
        self.models = list(models)
        self.interval_s = interval_s

    async def run(self) -> None:
        """Refresh every ``interval_s`` until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self.interval_s)

    async def refresh(self) -> None:
        """Read each model's depth and consumers once and set the gauges."""
        for model in self.models:
            if (depth := await _read(self.queue.depth, model, "depth")) is not None:
                metrics.QUEUE_DEPTH.labels(model).set(depth)
            if (consumers := await _read(self.queue.consumers, model, "consumers")) is not None:
                metrics.QUEUE_CONSUMERS.labels(model).set(consumers)


async def _read(read: Callable[[str], Awaitable[int]], model: str, what: str) -> int | None:
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            return await read(model)
    except (AxonError, TimeoutError) as exc:
        log.debug(
            "could not read a queue gauge from the broker",
            extra={"model": model, "gauge": what, "error": type(exc).__name__},
        )
        return None
