"""The worker's main loop: capacity, retries, dead letters and shutdown — over the
in-memory queue and streams with the fake engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence

import pytest

from axon.config import StreamSettings
from axon.core.errors import EngineError, QueueUnavailable, Unavailable
from axon.core.types import (
    ChatMessage,
    EventKind,
    FinishReason,
    SamplingParams,
    StreamEvent,
)
from axon.observability import metrics
from axon.queue.base import Delivery
from axon.queue.memory import MemoryJobQueue
from axon.streaming.memory import MemoryTokenStreams
from axon.worker.engines.base import Chunk
from axon.worker.engines.fake import FakeEngine
from axon.worker.job import JobSettings
from axon.worker.runner import Worker
from support.worker import DELIVERY_LIMIT, MODEL, completions, events, eventually, make_job

StartWorker = Callable[..., Awaitable[Worker]]


class GatedEngine(FakeEngine):
    """Holds every generation before its first token until ``release`` is set, and
    counts how many generations are open at once."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.release = asyncio.Event()
        self.active = 0
        self.max_active = 0

    async def generate(
        self, messages: Sequence[ChatMessage], params: SamplingParams, *, prefix: str = ""
    ) -> AsyncGenerator[Chunk, None]:
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self.release.wait()
            async for chunk in super().generate(messages, params, prefix=prefix):
                yield chunk
        finally:
            self.active -= 1


class FlakyEngine(FakeEngine):
    """Raises before its first token on the first ``fail_times`` calls, then works."""

    def __init__(self, fail_times: int, error: Exception, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.fail_times = fail_times
        self.error = error
        self.calls = 0

    async def generate(
        self, messages: Sequence[ChatMessage], params: SamplingParams, *, prefix: str = ""
    ) -> AsyncGenerator[Chunk, None]:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise self.error
        async for chunk in super().generate(messages, params, prefix=prefix):
            yield chunk


class RecordingQueue(MemoryJobQueue):
    """Remembers every delivery it hands out, so a test can act as the broker does when a
    consumer goes away: return the unacknowledged ones to the queue."""

    def __init__(self, delivery_limit: int) -> None:
        super().__init__(delivery_limit=delivery_limit)
        self.handed_out: list[Delivery] = []

    async def consume(self, model: str, prefetch: int) -> AsyncGenerator[Delivery, None]:
        async for delivery in super().consume(model, prefetch):
            self.handed_out.append(delivery)
            yield delivery

    async def requeue_unacknowledged(self) -> int:
        returned = 0
        for delivery in self.handed_out:
            try:
                await delivery.retry()
            except RuntimeError:  # settled already (acked or retried)
                continue
            returned += 1
        return returned


async def final_event(streams: MemoryTokenStreams, request_id: str) -> StreamEvent:
    give_up = time.monotonic() + 10
    while time.monotonic() < give_up:
        finals = [e for _, e in await streams.read(request_id) if e.final]
        if finals:
            return finals[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no final event on {request_id}")


@pytest.fixture
def queue() -> RecordingQueue:
    return RecordingQueue(delivery_limit=DELIVERY_LIMIT)


@pytest.fixture
async def start_worker(
    queue: RecordingQueue, streams: MemoryTokenStreams
) -> AsyncIterator[StartWorker]:
    workers: list[Worker] = []

    async def start(
        engine: FakeEngine,
        *,
        capacity: int = 4,
        lease_s: float = 10.0,
        max_queue_wait_s: float = 0.0,
    ) -> Worker:
        worker = Worker(
            engine=engine,
            queue=queue,
            streams=streams,
            settings=JobSettings(
                stream=StreamSettings(),
                lease_s=lease_s,
                delivery_limit=DELIVERY_LIMIT,
                max_queue_wait_s=max_queue_wait_s,
            ),
            capacity=capacity,
        )
        await worker.start()
        workers.append(worker)
        return worker

    yield start
    for worker in workers:
        await worker.stop(grace_s=1)


async def test_the_worker_runs_every_published_job_to_a_done_event(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    engine = FakeEngine(reply_tokens=6)
    await start_worker(engine)
    jobs = [make_job(f"question {i}") for i in range(3)]

    for job in jobs:
        await queue.publish(job)

    for i, job in enumerate(jobs):
        done = await final_event(streams, job.stream)
        assert done.kind is EventKind.DONE
        assert done.text.startswith(f"You said: question {i} ")
    assert queue.pending(MODEL) == 0
    assert sorted(c.request_id for c in await completions(streams)) == sorted(
        j.request_id for j in jobs
    )


async def test_the_worker_never_runs_more_jobs_than_its_capacity(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    engine = GatedEngine(reply_tokens=4)
    worker = await start_worker(engine, capacity=2)
    jobs = [make_job(f"q{i}") for i in range(5)]
    for job in jobs:
        await queue.publish(job)

    await eventually(lambda: engine.active == 2)
    await asyncio.sleep(0.2)  # room to over-consume, if the worker were going to
    assert engine.active == 2
    assert worker.running == 2
    assert queue.pending(MODEL) == 3

    engine.release.set()
    for job in jobs:
        assert (await final_event(streams, job.stream)).kind is EventKind.DONE
    assert engine.max_active == 2
    assert queue.pending(MODEL) == 0


async def test_a_job_whose_engine_fails_once_succeeds_on_redelivery(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    engine = FlakyEngine(1, RuntimeError("CUDA error"), reply_tokens=6)
    await start_worker(engine)
    job = make_job("again")

    await queue.publish(job)

    done = await final_event(streams, job.stream)
    assert done.kind is EventKind.DONE
    assert done.text == "".join(engine.reply_words(job.messages))
    assert engine.calls == 2
    assert [d.attempt for d in queue.handed_out] == [1, 2]
    assert [e for e in await events(streams, job.stream) if e.final] == [done]


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        EngineError("the engine failed"),
        Unavailable("the inference server is unreachable"),
    ],
    ids=["crash", "engine-error", "unavailable"],
)
async def test_a_job_that_keeps_failing_is_dead_lettered_and_its_client_told(
    start_worker: StartWorker,
    queue: RecordingQueue,
    streams: MemoryTokenStreams,
    failure: Exception,
) -> None:
    # Every delivery fails before the first token and is handed back; past the delivery
    # limit the queue gives up and the dead-letter loop tells the client.
    engine = FlakyEngine(100, failure)
    await start_worker(engine)
    job = make_job()

    await queue.publish(job)

    error = await final_event(streams, job.stream)
    assert error.kind is EventKind.ERROR
    assert error.error_code == "job_failed"
    assert error.finish_reason is FinishReason.ERROR
    assert engine.calls == DELIVERY_LIMIT
    [completion] = await completions(streams)
    assert completion.request_id == job.request_id
    assert completion.session_id == "sess_test"
    assert completion.finish_reason is FinishReason.ERROR
    assert completion.error_code == "job_failed"
    assert [d.attempt for d in queue.handed_out] == [1, 2, 3]
    assert queue.pending(MODEL) == 0


async def test_a_dead_letter_keeps_the_text_a_worker_streamed_before_failing(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    engine = FlakyEngine(100, Unavailable("the inference server is unreachable"))
    job = make_job()
    await streams.append(job.stream, [StreamEvent(kind=EventKind.TOKENS, text="Hal", tokens=1)])
    await start_worker(engine)

    await queue.publish(job)

    error = await final_event(streams, job.stream)
    assert error.error_code == "job_failed"
    assert error.text == "Hal"
    [completion] = await completions(streams)
    assert completion.text == "Hal"
    assert completion.usage.completion_tokens == 1


async def test_a_dead_letter_whose_stream_already_ended_adds_nothing(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    job = make_job()
    finished = [StreamEvent(kind=EventKind.DONE, text="ok", finish_reason=FinishReason.STOP)]
    await streams.append(job.stream, finished)
    await queue.publish(job)
    deliveries = queue.consume(MODEL, prefetch=1)
    delivery = await anext(deliveries)
    await delivery.reject()  # now in the dead-letter queue

    await start_worker(FakeEngine())
    # A later job proves the dead-letter loop has had its turn.
    marker = make_job()
    await queue.publish(marker)
    await final_event(streams, marker.stream)
    await asyncio.sleep(0.1)

    assert await events(streams, job.stream) == finished
    assert [c.request_id for c in await completions(streams)] == [marker.request_id]


async def test_stop_hands_unfinished_jobs_back_and_the_next_worker_continues(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    slow = FakeEngine(reply_tokens=200, tokens_per_second=50)
    worker = await start_worker(slow, capacity=2)
    job = make_job("long answer")
    await queue.publish(job)
    await eventually(lambda: slow.steps >= 3)

    await worker.stop(grace_s=0.05)

    assert worker.running == 0
    before = await events(streams, job.stream)
    assert before
    assert not any(e.final for e in before)
    steps = slow.steps
    await asyncio.sleep(0.2)
    assert slow.steps == steps  # the stopped worker spends nothing more on it
    assert await events(streams, job.stream) == before
    # The stopped worker handed the job back, untouched by anyone else meanwhile.
    assert queue.pending(job.model) == 1
    assert await queue.requeue_unacknowledged() == 0

    fast = FakeEngine(reply_tokens=200)
    await start_worker(fast)

    done = await final_event(streams, job.stream)
    words = "".join(fast.reply_words(job.messages))
    evs = await events(streams, job.stream)
    assert done.kind is EventKind.DONE
    assert done.text == words
    assert "".join(e.text for e in evs if e.kind is EventKind.TOKENS) == words
    assert done.usage is not None
    assert done.usage.completion_tokens == 200


async def test_stop_lets_jobs_finish_within_the_grace_period(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    engine = GatedEngine(reply_tokens=4)
    worker = await start_worker(engine)
    job = make_job()
    await queue.publish(job)
    await eventually(lambda: engine.active == 1)

    stopping = asyncio.create_task(worker.stop(grace_s=10))
    await asyncio.sleep(0.05)
    engine.release.set()
    await asyncio.wait_for(stopping, 10)

    assert (await final_event(streams, job.stream)).kind is EventKind.DONE
    assert await queue.requeue_unacknowledged() == 0
    # Stopped: a job published now is not taken.
    await queue.publish(make_job())
    await asyncio.sleep(0.1)
    assert queue.pending(MODEL) == 1


async def test_worker_reports_capacity_and_engine_load(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    slow = FakeEngine(MODEL, reply_tokens=200, tokens_per_second=50)
    await start_worker(slow, capacity=3)
    await queue.publish(make_job("busy"))
    text = metrics.render()[0].decode()
    assert f'axon_worker_capacity_sequences{{model="{MODEL}"}} 3.0' in text
    assert f'axon_engine_waiting_sequences{{model="{MODEL}"}} 0.0' in text
    await eventually(lambda: slow.steps >= 1)
    text = metrics.render()[0].decode()
    assert f'axon_worker_running_sequences{{model="{MODEL}"}} 1.0' in text


async def test_a_worker_that_stops_renewing_its_lease_loses_the_reply_to_another(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    # A paused or partitioned worker stops renewing its lease. Another worker publishes
    # the job again and continues the reply; the stale worker's late tokens are refused.
    stale_engine = FakeEngine(reply_tokens=200, tokens_per_second=100)
    stale = await start_worker(stale_engine, capacity=1, lease_s=0.5)
    job = make_job("long answer")
    await queue.publish(job)
    await eventually(lambda: stale_engine.steps >= 5)
    stale._loops["heartbeat"].cancel()  # as if the process were frozen
    fenced_before = metrics.FENCED_WRITES.labels(MODEL)._value.get()

    fresh = FakeEngine(reply_tokens=200)
    await start_worker(fresh, capacity=2, lease_s=0.5)

    done = await final_event(streams, job.stream)
    words = "".join(fresh.reply_words(job.messages))
    evs = await events(streams, job.stream)
    assert done.kind is EventKind.DONE
    assert done.text == words
    assert "".join(e.text for e in evs if e.kind is EventKind.TOKENS) == words
    assert [e for e in evs if e.final] == [done]
    assert fresh.prompts, "the fresh worker continued the reply"
    await eventually(lambda: metrics.FENCED_WRITES.labels(MODEL)._value.get() > fenced_before)
    [completion] = [c for c in await completions(streams) if c.request_id == job.request_id]
    assert completion.text == words


async def test_a_job_delivered_twice_is_answered_once(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    engine = FakeEngine(reply_tokens=60, tokens_per_second=200)
    await start_worker(engine, capacity=4)
    job = make_job("twice")
    await queue.publish(job)
    await eventually(lambda: engine.steps >= 2)
    await queue.publish(job)  # a broker redelivery, or a publish retried after a timeout

    done = await final_event(streams, job.stream)
    await eventually(lambda: queue.pending(MODEL) == 0 and not any_unsettled(queue))
    evs = await events(streams, job.stream)
    words = "".join(engine.reply_words(job.messages))
    assert "".join(e.text for e in evs if e.kind is EventKind.TOKENS) == words == done.text
    assert [e for e in evs if e.final] == [done]
    assert len(engine.prompts) == 1, "the second delivery never generated"


def any_unsettled(queue: RecordingQueue) -> bool:
    return any(not getattr(d, "_settled", True) for d in queue.handed_out)


class FailsToConsumeAtFirst(RecordingQueue):
    """A broker that refuses the first consumers (as RabbitMQ can, with 541 NOT_FOUND on a
    quorum queue it has just declared), then works."""

    def __init__(self, failures: int) -> None:
        super().__init__(delivery_limit=DELIVERY_LIMIT)
        self.failures = failures

    async def consume(self, model: str, prefetch: int) -> AsyncGenerator[Delivery, None]:
        if self.failures > 0:
            self.failures -= 1
            raise QueueUnavailable("cannot consume from RabbitMQ")
        async for delivery in super().consume(model, prefetch):
            yield delivery


async def test_a_consumer_that_dies_at_start_is_started_again_and_readiness_says_so(
    streams: MemoryTokenStreams,
) -> None:
    # A worker whose consumer died used to sit idle with /readyz at 200, and turns waited
    # for their deadline with nothing failing.
    queue = FailsToConsumeAtFirst(failures=1)
    worker = Worker(
        engine=FakeEngine(reply_tokens=4),
        queue=queue,
        streams=streams,
        settings=JobSettings(stream=StreamSettings(), delivery_limit=DELIVERY_LIMIT),
        capacity=2,
    )
    await worker.start()
    try:
        await eventually(lambda: "consume" in worker._failing)
        with pytest.raises(RuntimeError, match="consume"):
            await worker.ready()
        job = make_job("still answered")
        await queue.publish(job)
        assert (await final_event(streams, job.stream)).kind is EventKind.DONE
        # Healthy again once the new consumer has run a while.
        await eventually(lambda: not worker._failing, within_s=10)
        await worker.ready()
    finally:
        await worker.stop(grace_s=1)


async def test_a_job_published_again_after_its_reply_finished_adds_nothing(
    start_worker: StartWorker, queue: RecordingQueue, streams: MemoryTokenStreams
) -> None:
    # The outbox may publish a finished turn again (its "published" mark was lost), long
    # after it was queued: the worker neither runs it again nor expires it.
    engine = FakeEngine(reply_tokens=5)
    await start_worker(engine, max_queue_wait_s=60)
    job = make_job("once")
    await queue.publish(job)
    done = await final_event(streams, job.stream)

    late = job.model_copy(update={"enqueued_at": time.time() - 3600})
    await queue.publish(late)
    await eventually(lambda: queue.pending(MODEL) == 0 and not any_unsettled(queue))
    await asyncio.sleep(0.1)
    assert [e for e in await events(streams, job.stream) if e.final] == [done]
    assert len(engine.prompts) == 1
