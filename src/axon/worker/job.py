"""Run one job: claim the reply's lease, generate on the engine, append token batches to
the request's stream, end with one final event, and settle the delivery.

This is the worker's hot loop, so it does one stream append per batch of tokens and no
other I/O per token: cancellation, the deadline and the lease's heartbeat are watched
beside it, not inside it.

Every write carries the attempt's fence: once another attempt has claimed the reply (this
worker was paused, partitioned, or the job was delivered twice), the write is refused and
this attempt hands its delivery back without touching the stream again. What counts toward
the delivery limit is decided here, not by the broker: the job's own failures and attempts
that died count; a handback (shutdown, a Redis outage) does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from axon.config import StreamSettings
from axon.core.errors import (
    AxonError,
    Cancelled,
    EngineError,
    JobFailed,
    Overloaded,
    Timeout,
    Unavailable,
)
from axon.core.types import EventKind, Job, StreamEvent
from axon.observability import metrics, tracing
from axon.observability.logging import request_id_var, session_id_var
from axon.queue.base import Delivery
from axon.streaming.base import ClaimState, Fence, Fenced, TokenStreams
from axon.worker.engines.base import Engine
from axon.worker.final import Progress as Progress
from axon.worker.final import finish as finish
from axon.worker.patience import patiently

log = logging.getLogger(__name__)

#: How often the watcher looks for a cancellation flag or a passed deadline.
WATCH_INTERVAL_S = 0.1


@dataclass(frozen=True, slots=True)
class JobSettings:
    stream: StreamSettings
    #: A lease not renewed for this long is taken over by another worker.
    lease_s: float = 10.0
    #: Attempts (failed or died) before the job is given up on.
    delivery_limit: int = 3
    #: How long a Redis outage is ridden out before the job is handed back.
    outage_s: float = 30.0
    #: A job that waited longer than this before its first attempt fails instead (0: never).
    max_queue_wait_s: float = 0.0


@dataclass
class Lease:
    """The reply this attempt owns; ``fenced`` is set by the heartbeat when it lost it."""

    stream: str
    attempt: int
    #: Attempts before this one that failed or died.
    failures: int = 0
    fenced: bool = False
    #: The job's task, which the heartbeat cancels when the lease is lost.
    task: asyncio.Task[None] | None = None


async def run_job(
    job: Job,
    delivery: Delivery,
    *,
    engine: Engine,
    streams: TokenStreams,
    settings: JobSettings,
    leases: dict[str, Lease],
) -> None:
    """Run ``job`` and settle ``delivery`` (ack, or hand it back). ``leases`` is the
    worker's registry of owned leases, which its heartbeat renews."""
    request_id_var.set(job.request_id)
    session_id_var.set(job.session_id)
    # The job's span continues the turn's trace (its traceparent came with the job).
    attributes = {"axon.model": job.model, "axon.request_id": job.request_id}
    with tracing.span("axon.job", parent=job.traceparent, attributes=attributes):
        model = job.model
        try:
            lease = await _claim(job, streams, settings)
            if lease is None:
                # Finished by an earlier attempt (its completion was recorded with the final
                # event): a duplicate delivery, or one whose ack was lost.
                await delivery.ack()
                metrics.JOBS_FINISHED.labels(model, "duplicate").inc()
                return
        except (Unavailable, asyncio.CancelledError) as exc:
            # Redis stayed down, or the worker is stopping, before this delivery got the
            # lease (or while it waited for another attempt's): nothing ran, give it back.
            await delivery.retry()
            metrics.JOBS_FINISHED.labels(model, "handed_back").inc()
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        lease.task = asyncio.current_task()
        leases[job.stream] = lease
        try:
            await _attempt(job, delivery, lease, engine=engine, streams=streams, settings=settings)
        except Fenced:
            _fenced(job, lease)
            await delivery.retry()
        except Unavailable:
            # Redis stayed down longer than the worker waits: give the job back, uncounted.
            with contextlib.suppress(AxonError):
                await streams.release(job.stream, lease.attempt, failed=False)
            await delivery.retry()
            metrics.JOBS_FINISHED.labels(model, "handed_back").inc()
        except asyncio.CancelledError:
            if lease.fenced:
                _fenced(job, lease)
            else:
                # Shutting down: the writer has stopped (see _attempt), so the next worker may
                # continue the reply from where this one left it.
                with contextlib.suppress(AxonError):
                    await streams.release(job.stream, lease.attempt, failed=False)
                metrics.JOBS_FINISHED.labels(model, "handed_back").inc()
            await delivery.retry()
            raise
        finally:
            # Only this attempt's entry: a newer attempt at the same reply may run here too.
            if leases.get(job.stream) is lease:
                del leases[job.stream]


def _fenced(job: Job, lease: Lease) -> None:
    # Another attempt owns the reply now; this delivery goes back to the queue, where it
    # waits for that attempt to finish (or takes over if that one dies too).
    log.warning("lost the reply to another attempt; handing the job back")
    metrics.FENCED_WRITES.labels(job.model).inc()
    metrics.JOBS_FINISHED.labels(job.model, "fenced").inc()
    lease.fenced = True


async def _claim(job: Job, streams: TokenStreams, settings: JobSettings) -> Lease | None:
    """The lease of a new attempt, waiting while another attempt's lease is live; None
    when the reply is already finished."""
    payload = job.model_dump_json()
    while True:
        claim = await patiently(
            lambda: streams.claim(job.stream, payload, settings.lease_s), settings.outage_s
        )
        if claim.state is ClaimState.FINISHED:
            return None
        if claim.state is ClaimState.OWNED:
            return Lease(job.stream, claim.attempt, claim.failures)
        # A duplicate delivery while the reply runs elsewhere: keep it, in case that
        # attempt dies, and look again within a quarter of a lease.
        await asyncio.sleep(settings.lease_s / 4)


async def _attempt(
    job: Job,
    delivery: Delivery,
    lease: Lease,
    *,
    engine: Engine,
    streams: TokenStreams,
    settings: JobSettings,
) -> None:
    fence = Fence(lease.attempt, 0)
    waited = _waited_too_long(job, lease, settings)
    if waited is not None:
        # Nobody should wait for an answer that starts this late: end it now, with an
        # error the client sees and a failed reply in the history.
        metrics.QUEUE_EXPIRED.labels(job.model).inc()
        metrics.CANCELLATIONS.labels("queue_wait").inc()
        expired = Overloaded(f"the request waited {waited:.0f} s in the queue and was dropped")
        await patiently(lambda: finish(job, streams, Progress(), expired, fence), settings.outage_s)
        await delivery.ack()
        return
    if lease.failures >= settings.delivery_limit:
        # Earlier attempts died (a job that crashes its worker, or hangs): stop here.
        await _give_up(job, streams, settings, Progress(), lease, lease.failures)
        await delivery.ack()
        return
    existing = await patiently(lambda: streams.read(job.stream), settings.outage_s)
    prefix = "".join(e.text for _, e in existing)
    progress = Progress(
        prefix=prefix,
        prefix_tokens=sum(e.tokens for _, e in existing),
        written=len(prefix.encode()),
    )
    _waited(job, lease, progress)
    if existing:
        metrics.JOBS_RESUMED.labels(job.model).inc()
        log.info("resuming a reply another worker began", extra={"tokens": progress.prefix_tokens})
    gen = asyncio.create_task(_generate(job, engine, streams, settings, progress, fence))
    try:
        error = await _watch(job, gen, streams, progress)
    finally:
        # However this ends (an error, a shutdown, the lease lost), the writer stops, and
        # its last batch is flushed, before anything else happens to the reply.
        gen.cancel()
        await asyncio.gather(gen, return_exceptions=True)
    if isinstance(error, EngineError | Unavailable) and progress.tokens == 0:
        # The engine failed, or could not be reached, before anything reached the client,
        # so another attempt is invisible to it.
        if lease.failures + 1 >= settings.delivery_limit:
            await _give_up(job, streams, settings, progress, lease, lease.failures + 1)
            await delivery.ack()
            return
        log.warning("engine failed before the first token; retrying", extra={"code": error.code})
        await patiently(
            lambda: streams.release(job.stream, lease.attempt, failed=True), settings.outage_s
        )
        await delivery.retry()
        metrics.JOBS_FINISHED.labels(job.model, "retried").inc()
        return
    await patiently(lambda: finish(job, streams, progress, error, fence), settings.outage_s)
    await delivery.ack()


def _waited(job: Job, lease: Lease, progress: Progress) -> None:
    """Record the first attempt's wait in the queue (a later attempt waited for a worker
    that died, which the takeover metrics tell)."""
    if lease.attempt > 1 or job.enqueued_at is None:
        return
    waited = max(0.0, progress.started_at - job.enqueued_at)
    progress.queue_wait_s = waited
    metrics.QUEUE_WAIT.labels(job.model).observe(waited)
    tracing.record("axon.queue_wait", job.enqueued_at, progress.started_at, parent=job.traceparent)


def _waited_too_long(job: Job, lease: Lease, settings: JobSettings) -> float | None:
    """Seconds the job waited before its first attempt, when over the limit. A job that
    ran before is exempt: its client is reading it."""
    if settings.max_queue_wait_s <= 0 or lease.attempt > 1 or job.enqueued_at is None:
        return None
    waited = time.time() - job.enqueued_at
    return waited if waited > settings.max_queue_wait_s else None


async def _give_up(
    job: Job,
    streams: TokenStreams,
    settings: JobSettings,
    progress: Progress,
    lease: Lease,
    failures: int,
) -> None:
    log.error("job failed repeatedly; giving up", extra={"attempts": failures})
    error = JobFailed(f"the request failed {failures} times and was given up on")
    fence = Fence(lease.attempt, 0)
    await patiently(lambda: finish(job, streams, progress, error, fence), settings.outage_s)
    metrics.JOBS_FINISHED.labels(job.model, "dead").inc()


async def _watch(
    job: Job, gen: asyncio.Task[None], streams: TokenStreams, progress: Progress
) -> AxonError | None:
    """Wait for the generation, cancelling it when the client cancels or the deadline
    passes. Returns the error that ended the job, if any; raises what ends the attempt
    instead (the lease lost, or Redis down for too long)."""
    while True:
        done, _ = await asyncio.wait({gen}, timeout=WATCH_INTERVAL_S)
        if done:
            exc = gen.exception()
            if exc is None:
                return None
            if isinstance(exc, Fenced) or (isinstance(exc, Unavailable) and progress.streams_down):
                raise exc
            if isinstance(exc, AxonError):
                return exc
            log.error("engine failed", exc_info=exc)
            return EngineError(f"the engine failed: {type(exc).__name__}")
        reason: AxonError | None = None
        if time.time() > job.deadline:
            reason = Timeout("the request's deadline passed before the reply was finished")
            metrics.CANCELLATIONS.labels("deadline").inc()
        elif await _cancelled(streams, job.stream):
            reason = Cancelled("the request was cancelled")
        if reason is not None:
            gen.cancel()
            await asyncio.gather(gen, return_exceptions=True)
            return reason


async def _cancelled(streams: TokenStreams, stream: str) -> bool:
    try:
        # Ten looks a second: a span each would bury the turn's trace.
        with tracing.quiet():
            return await streams.is_cancelled(stream)
    except Unavailable:
        # Not knowable during a Redis outage; the appends wait it out meanwhile.
        return False


async def _generate(
    job: Job,
    engine: Engine,
    streams: TokenStreams,
    job_settings: JobSettings,
    progress: Progress,
    fence: Fence,
) -> None:
    settings = job_settings.stream
    interval = settings.batch_interval_ms / 1000
    batch: list[str] = []
    batch_tokens = 0
    batch_started = 0.0
    model = job.model

    async def flush() -> None:
        nonlocal batch, batch_tokens
        text = "".join(batch)
        event = StreamEvent(kind=EventKind.TOKENS, text=text, tokens=batch_tokens)
        batch, batch_tokens = [], 0
        at = Fence(fence.attempt, progress.written)
        try:
            # Generation waits here through a short Redis outage; the offset makes a
            # retried batch that did reach Redis a no-op.
            await patiently(lambda: streams.append(job.stream, [event], at), job_settings.outage_s)
        except Unavailable:
            progress.streams_down = True
            raise
        progress.written += len(text.encode())
        metrics.STREAM_ENTRIES.labels(model).inc()

    stream = engine.generate(job.messages, job.params, prefix=progress.prefix)
    try:
        async for chunk in stream:
            if chunk.prompt_tokens is not None:
                progress.prompt_tokens = chunk.prompt_tokens
            if chunk.tokens and not chunk.text:
                # A remote engine may settle its token count on an empty final delta.
                progress.tokens += chunk.tokens
            elif chunk.text:
                now = time.monotonic()
                if not batch:
                    batch_started = now
                batch.append(chunk.text)
                batch_tokens += chunk.tokens
                progress.text.append(chunk.text)
                progress.tokens += chunk.tokens
                if progress.first_token_at is None:
                    # The first token goes out alone: time to first token is what users feel.
                    progress.first_token_at = now
                    metrics.TIME_TO_FIRST_TOKEN.labels(model).observe(now - progress.started)
                    await flush()
                elif batch_tokens >= settings.batch_max_tokens or now - batch_started >= interval:
                    await flush()
            if chunk.finish_reason is not None:
                progress.finish = chunk.finish_reason
                break
    finally:
        await stream.aclose()
        if batch:  # also when cancelled or failed: the final text must match the stream
            await flush()
