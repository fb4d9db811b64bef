"""The end of a reply: its final event (with the completion to store, in the same atomic
append), and what is measured of it: tokens, durations, the prefill and decode spans, and
one log line per finished job."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from axon.core.errors import AxonError, Cancelled
from axon.core.types import Completion, EventKind, FinishReason, Job, StreamEvent, Timings, Usage
from axon.observability import metrics, tracing
from axon.streaming.base import Fence, TokenStreams

log = logging.getLogger(__name__)


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
    #: ``started`` as Unix time, for spans.
    started_at: float = field(default_factory=time.time)
    first_token_at: float | None = None
    #: Seconds the job waited in the queue before this attempt (first attempts only).
    queue_wait_s: float | None = None
    #: UTF-8 length of the reply text in the stream, the offset of the next batch.
    written: int = 0
    #: Set when a write failed because Redis stayed down (not the engine's failure).
    streams_down: bool = False

    @property
    def full_text(self) -> str:
        return self.prefix + "".join(self.text)


async def finish(
    job: Job,
    streams: TokenStreams,
    progress: Progress,
    error: AxonError | None,
    fence: Fence | None = None,
) -> None:
    """Append the final event and publish the completion (the reply to store). Safe to
    repeat: a second final event for the same fence is not written."""
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
    timings = _timings(progress)
    if error is None:
        event = StreamEvent(
            kind=EventKind.DONE,
            text=progress.full_text,
            tokens=usage.completion_tokens,
            finish_reason=finish_reason,
            usage=usage,
            timings=timings,
        )
    else:
        event = StreamEvent(
            kind=EventKind.ERROR,
            text=progress.full_text,
            finish_reason=finish_reason,
            usage=usage,
            error_code=error.code,
            error_message=error.message,
            timings=timings,
        )
    # Only session turns are stored; a stateless reply ends with its stream.
    completion = _completion(job, event) if job.session_id is not None else None
    await streams.append(job.stream, [event], fence, completion)
    _observe(job.model, progress, finish_reason, usage)
    _record_stages(job, progress, timings)
    log.info(
        "job finished",
        extra={
            "model": job.model,
            "finish_reason": finish_reason.value,
            "error_code": event.error_code,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "resumed_tokens": progress.prefix_tokens,
            **timings.model_dump(exclude_none=True),
        },
    )


def _timings(progress: Progress) -> Timings:
    """Where this attempt's time went: the queue, prefill (claim to first token), decode
    (first token to now)."""
    timings = Timings(queue_wait_s=progress.queue_wait_s)
    if progress.first_token_at is not None:
        timings.prefill_s = round(progress.first_token_at - progress.started, 6)
        timings.decode_s = round(time.monotonic() - progress.first_token_at, 6)
    return timings


def _record_stages(job: Job, progress: Progress, timings: Timings) -> None:
    """Prefill and decode as spans of the job's trace, once the final event is written
    (``finish`` may be called again after a failed append)."""
    if timings.prefill_s is None or timings.decode_s is None:
        return
    first_at = progress.started_at + timings.prefill_s
    tracing.record("axon.prefill", progress.started_at, first_at)
    tracing.record(
        "axon.decode",
        first_at,
        first_at + timings.decode_s,
        attributes={"axon.tokens": progress.tokens},
    )
    metrics.TURN_STAGE.labels(job.model, "decode").observe(timings.decode_s)


def _completion(job: Job, event: StreamEvent) -> Completion:
    return Completion(
        request_id=job.request_id,
        session_id=job.session_id,
        tenant=job.tenant,
        model=job.model,
        text=event.text,
        finish_reason=event.finish_reason or FinishReason.ERROR,
        usage=event.usage or Usage(),
        error_code=event.error_code,
        error_message=event.error_message,
    )


def _observe(model: str, progress: Progress, reason: FinishReason, usage: Usage) -> None:
    now = time.monotonic()
    metrics.JOBS_FINISHED.labels(model, reason.value).inc()
    metrics.REQUEST_DURATION.labels(model, reason.value).observe(now - progress.started)
    metrics.TOKEN_USAGE.labels(model, "input").observe(usage.prompt_tokens)
    metrics.TOKEN_USAGE.labels(model, "output").observe(usage.completion_tokens)
    metrics.PROMPT_TOKENS.labels(model).inc(usage.prompt_tokens)
    # This attempt's tokens only: a resumed reply's earlier tokens were counted by theirs.
    metrics.GENERATION_TOKENS.labels(model).inc(progress.tokens)
    if progress.first_token_at is not None and progress.tokens > 1:
        metrics.TIME_PER_OUTPUT_TOKEN.labels(model).observe(
            (now - progress.first_token_at) / (progress.tokens - 1)
        )
