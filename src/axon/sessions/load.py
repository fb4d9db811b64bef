"""Load shedding: refuse new work at once (503 with ``Retry-After``) when a model's queue is
deeper than it can drain, or when jobs this replica queued have waited too long, instead of
letting the queue and every client's wait grow without bound."""

from __future__ import annotations

import asyncio
import math
import time

from axon.config import LimitSettings
from axon.core.errors import AxonError, Overloaded
from axon.observability import metrics
from axon.queue.base import JobQueue

#: How long a queue depth read from the broker is reused: one read serves a burst.
DEPTH_TTL_S = 1.0
#: Longest a depth read may take; past it the request goes on (publishing will tell).
DEPTH_TIMEOUT_S = 1.0


class LoadShedder:
    def __init__(self, settings: LimitSettings) -> None:
        self._settings = settings
        #: Replies this replica relays whose first token has not come: id -> (model, since).
        self._waiting: dict[str, tuple[str, float]] = {}
        self._depths: dict[str, tuple[float, int]] = {}
        #: Requests this replica admitted since it last read each model's depth: a burst
        #: between two reads counts at once, not a second later.
        self._since_read: dict[str, int] = {}
        self._reading: dict[str, asyncio.Lock] = {}

    def waiting(self, request_id: str, model: str) -> None:
        self._waiting.setdefault(request_id, (model, time.monotonic()))

    def started(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def _refuse(self, reason: str, message: str, retry_after_s: float) -> Overloaded:
        metrics.SHED.labels(reason).inc()
        retry = str(max(1, math.ceil(retry_after_s)))
        return Overloaded(message, headers={"Retry-After": retry})

    def check(self, model: str) -> None:
        """Shed when a job of ``model`` this replica queued has waited too long."""
        limit = self._settings.max_queue_wait_s
        if limit <= 0:
            return
        now = time.monotonic()
        oldest = min((since for m, since in self._waiting.values() if m == model), default=now)
        if now - oldest > limit:
            raise self._refuse(
                "queue_wait",
                f"the model {model!r} is overloaded: queued requests have waited more than "
                f"{limit:g} s; retry later",
                min(limit, 30.0),
            )

    async def check_depth(self, queue: JobQueue, model: str) -> None:
        """Shed when ``model``'s queue holds more jobs than configured."""
        limit = self._settings.max_queue_depth
        if limit <= 0:
            return
        cached = self._depths.get(model)
        if cached is None or time.monotonic() - cached[0] > DEPTH_TTL_S:
            # One read at a time per model: a burst shares it, and the requests admitted
            # while it runs stay counted on top of what it finds.
            async with self._reading.setdefault(model, asyncio.Lock()):
                cached = self._depths.get(model)
                if cached is None or time.monotonic() - cached[0] > DEPTH_TTL_S:
                    before = self._since_read.get(model, 0)
                    try:
                        depth = await asyncio.wait_for(queue.depth(model), DEPTH_TIMEOUT_S)
                    except (AxonError, TimeoutError):
                        return  # the broker is the problem; publishing answers with a 503
                    cached = (time.monotonic(), depth)
                    self._depths[model] = cached
                    self._since_read[model] = self._since_read.get(model, 0) - before
        depth = cached[1] + self._since_read.get(model, 0)
        if depth >= limit:
            raise self._refuse(
                "queue_depth",
                f"the model {model!r} is overloaded: {depth} requests are waiting; retry later",
                2.0,
            )
        # Counted now, with no await since the check: concurrent requests of one burst
        # see each other (a request that fails later still counts until the next read,
        # which errs towards shedding).
        self._since_read[model] = self._since_read.get(model, 0) + 1
