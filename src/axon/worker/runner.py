"""The worker process's main loop: consume up to capacity, run each job, and turn
dead-lettered jobs into error events their clients can see."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from axon.config import StreamSettings
from axon.core.errors import JobFailed, Overloaded
from axon.observability import metrics
from axon.queue.base import Delivery, JobQueue
from axon.streaming.base import TokenStreams
from axon.worker.engines.base import Engine
from axon.worker.job import Progress, finish, run_job

log = logging.getLogger(__name__)


class Worker:
    """Runs jobs for one model. Never holds more jobs than ``capacity``: the queue's
    prefetch is the capacity, and a job is acknowledged only after its final event."""

    def __init__(
        self,
        *,
        engine: Engine,
        queue: JobQueue,
        streams: TokenStreams,
        settings: StreamSettings,
        capacity: int,
        max_queue_wait_s: float = 0.0,
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.streams = streams
        self.settings = settings
        self.capacity = capacity
        self.max_queue_wait_s = max_queue_wait_s
        self._jobs: set[asyncio.Task[None]] = set()
        self._loops: list[asyncio.Task[None]] = []

    @property
    def running(self) -> int:
        return len(self._jobs)

    async def start(self) -> None:
        model = self.engine.model
        metrics.WORKER_CAPACITY.labels(model).set(self.capacity)
        # Read at scrape time: the engine's own counts, never stale.
        metrics.ENGINE_RUNNING.labels(model).set_function(lambda: self.engine.running)
        metrics.ENGINE_WAITING.labels(model).set_function(lambda: self.engine.waiting)
        self._loops = [
            asyncio.create_task(self._consume(), name="worker-consume"),
            asyncio.create_task(self._dead_letters(), name="worker-dead-letters"),
        ]

    async def _consume(self) -> None:
        model = self.engine.model
        async for delivery in self.queue.consume(model, prefetch=self.capacity):
            task = asyncio.create_task(self._run(delivery))
            self._jobs.add(task)
            metrics.RUNNING_SEQUENCES.labels(model).set(len(self._jobs))
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        metrics.RUNNING_SEQUENCES.labels(self.engine.model).set(len(self._jobs))

    def _waited_too_long(self, delivery: Delivery) -> float | None:
        """Seconds a first delivery waited in the queue, when over the limit. Redelivered
        jobs are exempt: they were already running and their client is reading."""
        job = delivery.job
        if self.max_queue_wait_s <= 0 or delivery.attempt > 1 or job.enqueued_at is None:
            return None
        waited = time.time() - job.enqueued_at
        return waited if waited > self.max_queue_wait_s else None

    async def _run(self, delivery: Delivery) -> None:
        waited = self._waited_too_long(delivery)
        if waited is not None:
            # Nobody should wait for an answer that started this late: end it now, with an
            # error the client sees and a failed reply in the history.
            job = delivery.job
            metrics.QUEUE_EXPIRED.labels(job.model).inc()
            error = Overloaded(f"the request waited {waited:.0f} s in the queue and was dropped")
            try:
                await finish(job, self.streams, Progress(), error)
                await delivery.ack()
            except Exception:
                log.exception("could not end an expired job; handing it back")
                with contextlib.suppress(Exception):
                    await delivery.retry()
            return
        try:
            await run_job(
                delivery.job,
                delivery,
                engine=self.engine,
                streams=self.streams,
                settings=self.settings,
            )
        except asyncio.CancelledError:
            # Shutting down: hand the job back so that the next worker continues the stream
            # from where this one stopped (a broker would also do so when the channel
            # closes, but the in-process queue has no channel).
            with contextlib.suppress(Exception):
                await delivery.retry()
            raise
        except Exception:
            # One bad job must never take the worker down; the queue retries it and
            # dead-letters it past the delivery limit.
            log.exception("job failed unexpectedly; handing it back")
            with contextlib.suppress(Exception):
                await delivery.retry()

    async def _dead_letters(self) -> None:
        async for delivery in self.queue.dead_letters(self.engine.model):
            job = delivery.job
            log.error(
                "job dead-lettered after repeated failures", extra={"request_id": job.request_id}
            )
            try:
                existing = await self.streams.read(job.stream)
                if not any(event.final for _, event in existing):
                    progress = Progress(
                        prefix="".join(e.text for _, e in existing),
                        prefix_tokens=sum(e.tokens for _, e in existing),
                    )
                    error = JobFailed(
                        f"the request failed {delivery.attempt} times and was given up on"
                    )
                    await finish(job, self.streams, progress, error)
                metrics.JOBS_FINISHED.labels(job.model, "dead").inc()
                await delivery.ack()
            except Exception:
                log.exception("could not report a dead-lettered job; retrying shortly")
                await delivery.retry()
                # The stream backend is likely down: do not spin on the same job.
                await asyncio.sleep(1.0)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking jobs, let running ones finish within ``grace_s``, then hand the
        rest back to the queue."""
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        if self._jobs:
            _, pending = await asyncio.wait(set(self._jobs), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
