"""Run one job: generate on the engine, append token batches to the request's stream,
end with one final event, and settle the delivery (ack, retry or dead-letter).

This is the worker's hot loop, so it does one stream append per batch of tokens and no
other I/O per token: cancellation and the deadline are watched beside it, not inside it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from axon.config import StreamSettings
from axon.core.errors import AxonError, Cancelled, EngineError, Timeout, Unavailable
from axon.core.types import Completion, EventKind, FinishReason, Job, StreamEvent, Usage
from axon.observability import metrics
from axon.observability.logging import request_id_var, session_id_var
from axon.queue.base import Delivery
from axon.streaming.base import TokenStreams
from axon.worker.engines.base import Engine

log = logging.getLogger(__name__)

#: How often the watcher looks for a cancellation flag or a passed deadline.
WATCH_INTERVAL_S = 0.1


@dataclass
class Progress:
    """What one attempt has produced so far; survives the generation task's cancellation."""

    prefix: str = ""
    prefix_tokens: int = 0
    text: list[str] = field(default_factory=list)
    tokens: int = 0
    prompt_tokens: int = 0
    finish: FinishReason | None = None
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def full_text(self) -> str:
        return self.prefix + "".join(self.text)


async def run_job(
    job: Job,
    delivery: Delivery,
    *,
    engine: Engine,
    streams: TokenStreams,
    settings: StreamSettings,
) -> None:
    request_id_var.set(job.request_id)
    session_id_var.set(job.session_id)
    existing = await streams.read(job.stream)
    if any(event.final for _, event in existing):
        # A previous attempt finished but died before its ack: nothing left to do.
        await delivery.ack()
        return
    progress = Progress(
        prefix="".join(e.text for _, e in existing),
        prefix_tokens=sum(e.tokens for _, e in existing),
    )
    if existing:
        log.info("resuming a reply another worker began", extra={"tokens": progress.prefix_tokens})
    error: AxonError | None = None
    gen = asyncio.create_task(_generate(job, engine, streams, settings, progress))
    try:
        error = await _watch(job, gen, streams)
    except Unavailable:
        # The stream backend is down: hand the job back rather than lose the reply.
        gen.cancel()
        await delivery.retry()
        metrics.JOBS_FINISHED.labels(job.model, "retried").inc()
        return
    finally:
        gen.cancel()  # the job itself was cancelled (shutdown): stop generating too
    if isinstance(error, EngineError) and progress.tokens == 0:
        # Nothing reached the client yet, so another attempt is invisible to it. Past the
        # delivery limit the queue dead-letters the job, and the dead-letter handler
        # tells the client: a poison job cannot loop, and the broker does the counting.
        log.warning("engine failed before the first token; retrying", extra={"code": error.code})
        await delivery.retry()
        metrics.JOBS_FINISHED.labels(job.model, "retried").inc()
        return
    await finish(job, streams, progress, error)
    await delivery.ack()


async def _watch(job: Job, gen: asyncio.Task[None], streams: TokenStreams) -> AxonError | None:
    """Wait for the generation, cancelling it when the client cancels or the deadline
    passes. Returns the error that ended the job, if any."""
    while True:
        done, _ = await asyncio.wait({gen}, timeout=WATCH_INTERVAL_S)
        if done:
            exc = gen.exception()
            if exc is None:
                return None
            if isinstance(exc, Unavailable):
                raise exc
            if isinstance(exc, AxonError):
                return exc
            log.error("engine failed", exc_info=exc)
            return EngineError(f"the engine failed: {type(exc).__name__}")
        reason: AxonError | None = None
        if time.time() > job.deadline:
            reason = Timeout("the request's deadline passed before the reply was finished")
        elif await streams.is_cancelled(job.stream):
            reason = Cancelled("the request was cancelled")
        if reason is not None:
            gen.cancel()
            await asyncio.gather(gen, return_exceptions=True)
            return reason


async def _generate(
    job: Job,
    engine: Engine,
    streams: TokenStreams,
    settings: StreamSettings,
    progress: Progress,
) -> None:
    interval = settings.batch_interval_ms / 1000
    batch: list[str] = []
    batch_tokens = 0
    batch_started = 0.0
    model = job.model

    async def flush() -> None:
        nonlocal batch, batch_tokens
        event = StreamEvent(kind=EventKind.TOKENS, text="".join(batch), tokens=batch_tokens)
        batch, batch_tokens = [], 0
        await streams.append(job.stream, [event])
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


async def finish(
    job: Job, streams: TokenStreams, progress: Progress, error: AxonError | None
) -> None:
    """Append the final event and publish the completion (the reply to store)."""
    usage = Usage(
        prompt_tokens=progress.prompt_tokens,
        completion_tokens=progress.prefix_tokens + progress.tokens,
    )
    if isinstance(error, Cancelled):
        finish_reason, error = FinishReason.CANCELLED, None
    elif error is not None:
        finish_reason = FinishReason.ERROR
    else:
        finish_reason = progress.finish or FinishReason.STOP
    if error is None:
        event = StreamEvent(
            kind=EventKind.DONE,
            text=progress.full_text,
            tokens=usage.completion_tokens,
            finish_reason=finish_reason,
            usage=usage,
        )
    else:
        event = StreamEvent(
            kind=EventKind.ERROR,
            text=progress.full_text,
            finish_reason=finish_reason,
            usage=usage,
            error_code=error.code,
            error_message=error.message,
        )
    await streams.append(job.stream, [event])
    if job.session_id is not None:
        # Only session turns are stored; a stateless reply ends with its stream.
        await streams.publish_completion(
            Completion(
                request_id=job.request_id,
                session_id=job.session_id,
                tenant=job.tenant,
                model=job.model,
                text=progress.full_text,
                finish_reason=finish_reason,
                usage=usage,
                error_code=event.error_code,
                error_message=event.error_message,
            )
        )
    _observe(job.model, progress, finish_reason, usage)


def _observe(model: str, progress: Progress, reason: FinishReason, usage: Usage) -> None:
    now = time.monotonic()
    metrics.JOBS_FINISHED.labels(model, reason.value).inc()
    metrics.REQUEST_DURATION.labels(model, reason.value).observe(now - progress.started)
    metrics.TOKEN_USAGE.labels(model, "input").observe(usage.prompt_tokens)
    metrics.TOKEN_USAGE.labels(model, "output").observe(usage.completion_tokens)
    if progress.first_token_at is not None and progress.tokens > 1:
        metrics.TIME_PER_OUTPUT_TOKEN.labels(model).observe(
            (now - progress.first_token_at) / (progress.tokens - 1)
        )
