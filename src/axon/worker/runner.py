"""The worker process's main loop: consume up to capacity, run each job, and turn
dead-lettered jobs into error events their clients can see."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from axon.core.errors import AxonError, JobFailed, Unavailable
from axon.core.types import Job
from axon.observability import metrics, tracing
from axon.queue.base import Delivery, JobQueue
from axon.streaming.base import TokenStreams
from axon.worker.engines.base import Engine
from axon.worker.job import JobSettings, Lease, Progress, finish, run_job

log = logging.getLogger(__name__)

_FIRST_RESTART_S = 0.5
_MAX_RESTART_S = 10.0
_HEALTHY_AFTER_S = 3.0
#: How often expired leases are looked for; takeover happens within lease_s plus this.
_TAKEOVER_INTERVAL_S = 1.0


class Worker:
    """Runs jobs for one model. Never holds more jobs than ``capacity``: the queue's
    prefetch is the capacity, and a job is acknowledged only after its final event.

    Beside the consumer run three loops: the heartbeat renews the lease of every running
    reply (and stops a job whose lease another attempt took), the takeover publishes again
    the jobs of workers that stopped renewing theirs, and the dead-letter reader tells the
    clients of jobs the queue gave up on. A loop that fails (the broker or Redis away)
    starts over with a backoff, and ``/readyz`` says so meanwhile."""

    def __init__(
        self,
        *,
        engine: Engine,
        queue: JobQueue,
        streams: TokenStreams,
        settings: JobSettings,
        capacity: int,
        stop_grace_s: float = 20.0,
    ) -> None:
        self.engine = engine
        self.queue = queue
        self.streams = streams
        self.settings = settings
        self.capacity = capacity
        self.stop_grace_s = stop_grace_s
        self._jobs: set[asyncio.Task[None]] = set()
        self._leases: dict[str, Lease] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._failing: dict[str, str] = {}
        self._redis_since: float | None = None
        self._stopping = False

    @property
    def running(self) -> int:
        return len(self._jobs)

    async def start(self) -> None:
        model = self.engine.model
        metrics.WORKER_CAPACITY.labels(model).set(self.capacity)
        # Read at scrape time: the engine's own counts, never stale.
        metrics.ENGINE_RUNNING.labels(model).set_function(lambda: self.engine.running)
        metrics.ENGINE_WAITING.labels(model).set_function(lambda: self.engine.waiting)
        loops: dict[str, Callable[[], Awaitable[None]]] = {
            "consume": self._consume,
            "dead-letters": self._dead_letters,
            # Polls every second or so: spans of them would bury the jobs' traces.
            "heartbeat": functools.partial(_quietly, self._heartbeat),
            "takeover": functools.partial(_quietly, self._takeover),
        }
        self._loops = {
            name: asyncio.create_task(self._forever(name, loop), name=f"worker-{name}")
            for name, loop in loops.items()
        }

    async def ready(self) -> None:
        """A readiness check: raise while stopping or while a loop is failing."""
        if self._stopping:
            raise RuntimeError("stopping")
        if self._failing:
            raise RuntimeError("; ".join(f"{k}: {v}" for k, v in sorted(self._failing.items())))

    async def _forever(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run ``loop`` until the worker stops, starting it over after a failure (a
        consumer can die at start on a queue the broker has just declared, or with the
        connection) with a backoff, so that one outage never leaves a worker idle."""
        delay = _FIRST_RESTART_S
        while not self._stopping:
            # A loop that has run a while without failing is healthy again (a consumer on
            # an idle queue has nothing else to show for it).
            healed = asyncio.get_running_loop().call_later(
                _HEALTHY_AFTER_S, self._failing.pop, name, None
            )
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                healed.cancel()
                self._failing[name] = type(exc).__name__
                log.warning(
                    "worker loop failed; starting it over",
                    extra={"loop": name, "error": type(exc).__name__, "delay_s": delay},
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _MAX_RESTART_S)

    async def _consume(self) -> None:
        model = self.engine.model
        redelivered = metrics.JOBS_REDELIVERED.labels(model)
        async for delivery in self.queue.consume(model, prefetch=self.capacity):
            if delivery.attempt > 1:
                redelivered.inc()
            task = asyncio.create_task(self._run(delivery))
            self._jobs.add(task)
            metrics.RUNNING_SEQUENCES.labels(model).set(len(self._jobs))
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._jobs.discard(task)
        metrics.RUNNING_SEQUENCES.labels(self.engine.model).set(len(self._jobs))

    async def _heartbeat(self) -> None:
        """Renew every running reply's lease; a job whose lease another attempt took stops
        writing at once (its writes would be refused anyway) and hands its delivery back."""
        lease_s = self.settings.lease_s
        while True:
            await asyncio.sleep(lease_s / 3)
            owned = list(self._leases.values())
            try:
                if owned:
                    pairs = [(x.stream, x.attempt) for x in owned]
                    fenced = await self.streams.renew(pairs, lease_s)
                else:
                    fenced = set()
                    await self.streams.ping()
            except Unavailable:
                self._redis_since = None
                self._failing["redis"] = "unavailable"
                continue
            self._failing.pop("redis", None)
            if self._redis_since is None:
                self._redis_since = time.monotonic()
            for lease in owned:
                if lease.stream in fenced and not lease.fenced and lease.task is not None:
                    lease.fenced = True
                    lease.task.cancel()

    async def _takeover(self) -> None:
        """Publish again the jobs whose worker stopped renewing their lease."""
        lease_s = self.settings.lease_s
        while True:
            await asyncio.sleep(_TAKEOVER_INTERVAL_S)
            # Right after an outage every lease looks expired, though their workers are
            # alive and about to renew: give them one lease period first.
            if self._redis_since is None or time.monotonic() - self._redis_since < lease_s:
                continue
            try:
                jobs = await self.streams.take_expired()
            except Unavailable:
                continue
            for raw in jobs:
                job = Job.model_validate_json(raw)
                metrics.TAKEOVERS.inc()
                log.warning(
                    "a reply's worker stopped renewing its lease; publishing the job again",
                    extra={"request_id": job.request_id},
                )
                try:
                    await self.queue.publish(job)
                except AxonError:
                    # Not lost: the stale worker's own delivery goes back to the queue as
                    # soon as it finds itself fenced, or the broker returns it when that
                    # worker's connection dies.
                    log.warning("could not publish a taken-over job", exc_info=True)

    async def _run(self, delivery: Delivery) -> None:
        try:
            # run_job settles the delivery however the job ends, a shutdown included.
            await run_job(
                delivery.job,
                delivery,
                engine=self.engine,
                streams=self.streams,
                settings=self.settings,
                leases=self._leases,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            # One bad job must never take the worker down. If it was not settled yet, it
            # goes back to the queue; its lease counts the attempt as failed.
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
                # Counted once told: a dead letter handed back below comes round again.
                metrics.JOBS_DEAD_LETTERED.labels(job.model).inc()
            except Exception:
                log.exception("could not report a dead-lettered job; retrying shortly")
                await delivery.retry()
                # The stream backend is likely down: do not spin on the same job.
                await asyncio.sleep(1.0)

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking jobs, let running ones finish within the grace period, then hand the
        rest back: each stops writing first, then releases its lease, so the worker that
        gets it continues the reply with no second writer. The consumer's channel stays
        open until every delivery is settled, so nothing returns to the queue unsettled."""
        self._stopping = True
        for name in ("consume", "dead-letters", "takeover"):
            if name in self._loops:
                self._loops[name].cancel()
        if self._jobs:
            grace = self.stop_grace_s if grace_s is None else grace_s
            _, pending = await asyncio.wait(set(self._jobs), timeout=grace)
            if pending:
                log.info("handing unfinished replies on", extra={"jobs": len(pending)})
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for loop in self._loops.values():
            loop.cancel()
        await asyncio.gather(*self._loops.values(), return_exceptions=True)


async def _quietly(loop: Callable[[], Awaitable[None]]) -> None:
    with tracing.quiet():
        await loop()
