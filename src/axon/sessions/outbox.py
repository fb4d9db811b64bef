"""Publishing turns whose session manager died between storing them and queueing them.

The user message and its job are written in one transaction (the job to the outbox), and
the outbox entry is dropped once the broker confirms the job. An entry older than a bound
therefore belongs to a replica that died in between: any replica publishes it again.
Publishing a job twice is harmless (the reply's lease lets one delivery run it), so
replicas sweeping at the same time need no coordination.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from axon.core.errors import AxonError
from axon.core.types import Job
from axon.observability import metrics
from axon.queue.base import JobQueue
from axon.sessions.store import SessionStore

log = logging.getLogger(__name__)


class OutboxSweeper:
    def __init__(self, store: SessionStore, queue: JobQueue, *, after_s: float) -> None:
        self._store = store
        self._queue = queue
        self._after_s = after_s

    async def run(self) -> None:
        """Sweep every third of ``after_s`` until cancelled; an outage only delays it."""
        while True:
            await asyncio.sleep(self._after_s / 3)
            try:
                await self.sweep()
            except AxonError as exc:
                log.warning("outbox sweep failed; trying again later", extra={"code": exc.code})

    async def sweep(self) -> int:
        """Publish every job left in the outbox past ``after_s``; returns how many."""
        published = 0
        for raw in await self._store.unpublished(self._after_s):
            try:
                job = Job.model_validate_json(raw)
            except ValidationError:
                log.error("dropping an undecodable outbox entry")
                continue
            await self._queue.publish(job)
            await self._store.published(job.request_id)
            metrics.JOBS_PUBLISHED.labels(job.model).inc()
            log.warning(
                "queued a turn whose session manager died before queueing it",
                extra={"request_id": job.request_id},
            )
            published += 1
        return published
