"""One job on the worker: what its token stream carries, how it ends, and how its
delivery is settled (ack, retry) — over the in-memory queue and streams."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

import pytest

from axon.config import StreamSettings
from axon.core.types import (
    ChatMessage,
    EventKind,
    FinishReason,
    Job,
    SamplingParams,
    StreamEvent,
)
from axon.queue.base import Delivery
from axon.queue.memory import MemoryJobQueue
from axon.streaming.base import Fence
from axon.streaming.memory import MemoryTokenStreams
from axon.worker.engines.base import Chunk
from axon.worker.engines.fake import FakeEngine
from axon.worker.job import JobSettings, run_job
from support.worker import DELIVERY_LIMIT, MODEL, completions, events, eventually, make_job


class FailingEngine(FakeEngine):
    """Raises before its first token on the first ``fail_times`` calls, then works."""

    def __init__(self, fail_times: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.fail_times = fail_times
        self.calls = 0

    async def generate(
        self, messages: Sequence[ChatMessage], params: SamplingParams, *, prefix: str = ""
    ) -> AsyncGenerator[Chunk, None]:
        self.calls += 1
        if self.calls <= self.fail_times:
            raise RuntimeError("the GPU fell off the bus")
        async for chunk in super().generate(messages, params, prefix=prefix):
            yield chunk


class MidReplyFailingEngine(FakeEngine):
    """Yields ``good_tokens`` tokens, then raises."""

    def __init__(self, good_tokens: int, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.good_tokens = good_tokens
        self.calls = 0

    async def generate(
        self, messages: Sequence[ChatMessage], params: SamplingParams, *, prefix: str = ""
    ) -> AsyncGenerator[Chunk, None]:
        self.calls += 1
        produced = 0
        async for chunk in super().generate(messages, params, prefix=prefix):
            if produced == self.good_tokens:
                raise RuntimeError("out of memory")
            produced += chunk.tokens
            yield chunk


class SilentEngine(FakeEngine):
    """Never yields: waits until its generation is cancelled or closed."""

    def __init__(self) -> None:
        super().__init__()
        self.started = 0
        self.closed = 0

    async def generate(
        self, messages: Sequence[ChatMessage], params: SamplingParams, *, prefix: str = ""
    ) -> AsyncGenerator[Chunk, None]:
        self.started += 1
        try:
            await asyncio.Event().wait()
            yield Chunk("never")
        finally:
            self.closed += 1


async def take(queue: MemoryJobQueue) -> Delivery:
    """The next delivery of the test model, as a worker would receive it."""
    deliveries = queue.consume(MODEL, prefetch=1)
    delivery = await asyncio.wait_for(anext(deliveries), 5)
    return delivery


def token_text(evs: list[StreamEvent]) -> str:
    return "".join(e.text for e in evs if e.kind is EventKind.TOKENS)


async def assert_settled(delivery: Delivery) -> None:
    """A delivery that was acked or retried cannot be settled again."""
    with pytest.raises(RuntimeError, match="already settled"):
        await delivery.ack()


@pytest.fixture
def queue() -> MemoryJobQueue:
    return MemoryJobQueue(delivery_limit=DELIVERY_LIMIT)


async def run(
    job: Job,
    delivery: Delivery,
    engine: FakeEngine,
    streams: MemoryTokenStreams,
    settings: StreamSettings | None = None,
) -> None:
    await asyncio.wait_for(
        run_job(
            job,
            delivery,
            engine=engine,
            streams=streams,
            settings=job_settings(settings),
            leases={},
        ),
        10,
    )


def job_settings(stream: StreamSettings | None = None) -> JobSettings:
    return JobSettings(stream=stream or StreamSettings(), delivery_limit=DELIVERY_LIMIT)


async def start_job(
    queue: MemoryJobQueue, engine: FakeEngine, streams: MemoryTokenStreams
) -> tuple[Job, Delivery, asyncio.Task[None]]:
    """Publish a job and start running it in a task, once the engine is generating."""
    job = make_job()
    await queue.publish(job)
    delivery = await take(queue)
    task = asyncio.create_task(
        run_job(job, delivery, engine=engine, streams=streams, settings=job_settings(), leases={})
    )
    await eventually(lambda: engine.steps >= 3)
    return job, delivery, task


async def publish_and_run(
    job: Job,
    queue: MemoryJobQueue,
    engine: FakeEngine,
    streams: MemoryTokenStreams,
    settings: StreamSettings | None = None,
) -> Delivery:
    await queue.publish(job)
    delivery = await take(queue)
    await run(job, delivery, engine, streams, settings)
    return delivery


async def test_stream_is_tokens_then_one_done_event_with_the_full_text_and_usage(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    engine = FakeEngine(reply_tokens=10)
    job = make_job("hello there")

    delivery = await publish_and_run(job, queue, engine, streams)

    evs = await events(streams, job.stream)
    *tokens, done = evs
    assert tokens
    assert all(e.kind is EventKind.TOKENS for e in tokens)
    assert done.kind is EventKind.DONE
    assert done.text == token_text(evs)
    assert done.text == "".join(engine.reply_words(job.messages))
    assert done.text.startswith("You said: hello there ")
    assert done.finish_reason is FinishReason.STOP
    assert done.usage is not None
    assert done.usage.completion_tokens == sum(e.tokens for e in tokens) == 10
    assert done.usage.prompt_tokens == engine.tokenizer.count_prompt(job.messages)
    assert engine.prompts == [job.messages]
    await assert_settled(delivery)
    assert queue.pending(MODEL) == 0

    [completion] = await completions(streams)
    assert completion.request_id == job.request_id
    assert completion.session_id == "sess_test"
    assert completion.text == done.text
    assert completion.finish_reason is FinishReason.STOP
    assert completion.usage == done.usage
    assert completion.error_code is None


async def test_first_token_goes_out_alone_then_tokens_are_batched(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    # A fast engine and an interval long enough that only the size limit flushes.
    engine = FakeEngine(reply_tokens=14)
    settings = StreamSettings(batch_max_tokens=4, batch_interval_ms=60_000)
    job = make_job()

    await publish_and_run(job, queue, engine, streams, settings)

    evs = await events(streams, job.stream)
    tokens = [e for e in evs if e.kind is EventKind.TOKENS]
    assert [e.tokens for e in tokens] == [1, 4, 4, 4, 1]
    assert tokens[0].text == "You "
    assert evs[-1].kind is EventKind.DONE
    assert evs[-1].text == "".join(e.text for e in tokens)


async def test_max_tokens_ends_the_reply_with_finish_reason_length(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    engine = FakeEngine(reply_tokens=24)
    job = make_job("hi", max_tokens=5)

    await publish_and_run(job, queue, engine, streams)

    done = (await events(streams, job.stream))[-1]
    assert done.kind is EventKind.DONE
    assert done.finish_reason is FinishReason.LENGTH
    assert done.usage is not None
    assert done.usage.completion_tokens == 5
    assert done.text == "".join(engine.reply_words(job.messages)[:5])


async def test_a_stop_sequence_ends_the_reply_before_it_with_finish_reason_stop(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    engine = FakeEngine(reply_tokens=24)
    job = make_job("hi", stop=("w3",))

    await publish_and_run(job, queue, engine, streams)

    done = (await events(streams, job.stream))[-1]
    assert done.kind is EventKind.DONE
    assert done.finish_reason is FinishReason.STOP
    assert done.text == "You said: hi w0 w1 w2 "
    assert "w3" not in token_text(await events(streams, job.stream))


async def test_cancelling_ends_the_job_as_cancelled_and_stops_the_engine(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    engine = FakeEngine(reply_tokens=100_000, tokens_per_second=200)
    job, delivery, task = await start_job(queue, engine, streams)

    await streams.cancel(job.stream)
    await asyncio.wait_for(task, 10)

    evs = await events(streams, job.stream)
    done = evs[-1]
    assert done.kind is EventKind.DONE
    assert done.finish_reason is FinishReason.CANCELLED
    assert done.text == token_text(evs)
    assert [e for e in evs if e.final] == [done]
    await assert_settled(delivery)
    assert queue.pending(MODEL) == 0
    [completion] = await completions(streams)
    assert completion.finish_reason is FinishReason.CANCELLED
    assert completion.text == done.text

    steps = engine.steps
    await asyncio.sleep(0.2)
    assert engine.steps == steps
    assert len(await events(streams, job.stream)) == len(evs)


async def test_a_passed_deadline_ends_the_job_with_a_timeout_error(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    engine = SilentEngine()
    job = make_job(deadline_in_s=-1)

    delivery = await publish_and_run(job, queue, engine, streams)

    [error] = await events(streams, job.stream)
    assert error.kind is EventKind.ERROR
    assert error.error_code == "timeout"
    assert error.finish_reason is FinishReason.ERROR
    assert engine.closed == engine.started == 1
    await assert_settled(delivery)
    assert queue.pending(MODEL) == 0
    [completion] = await completions(streams)
    assert completion.finish_reason is FinishReason.ERROR
    assert completion.error_code == "timeout"


async def test_a_deadline_passing_mid_reply_keeps_the_text_so_far_and_stops_the_engine(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    engine = FakeEngine(reply_tokens=100_000, tokens_per_second=100)
    job = make_job(deadline_in_s=0.5)

    await publish_and_run(job, queue, engine, streams)

    evs = await events(streams, job.stream)
    error = evs[-1]
    assert error.kind is EventKind.ERROR
    assert error.error_code == "timeout"
    assert error.text == token_text(evs) != ""
    steps = engine.steps
    await asyncio.sleep(0.2)
    assert engine.steps == steps


async def test_an_engine_error_before_the_first_token_is_retried_invisibly(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    engine = FailingEngine(fail_times=1, reply_tokens=8)
    job = make_job()

    first = await publish_and_run(job, queue, engine, streams)

    assert first.attempt == 1
    await assert_settled(first)
    assert await events(streams, job.stream) == []
    assert await completions(streams) == []
    assert queue.pending(MODEL) == 1

    second = await take(queue)
    assert second.attempt == 2
    await run(job, second, engine, streams)

    evs = await events(streams, job.stream)
    assert evs[-1].kind is EventKind.DONE
    assert evs[-1].text == "".join(engine.reply_words(job.messages))
    assert engine.calls == 2
    await assert_settled(second)
    assert queue.pending(MODEL) == 0
    assert len(await completions(streams)) == 1


async def test_an_engine_that_keeps_failing_before_the_first_token_ends_with_job_failed(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    # The worker counts the job's failed attempts itself (in its lease), whatever the
    # broker's own delivery limit: the last allowed attempt ends the reply with an error.
    engine = FailingEngine(fail_times=100)
    job = make_job()
    await queue.publish(job)

    for attempt in range(1, DELIVERY_LIMIT + 1):
        delivery = await take(queue)
        assert delivery.attempt == attempt
        await run(job, delivery, engine, streams)
        await assert_settled(delivery)

    assert engine.calls == DELIVERY_LIMIT
    assert queue.pending(MODEL) == 0
    [error] = await events(streams, job.stream)
    assert error.kind is EventKind.ERROR
    assert error.error_code == "job_failed"
    assert f"{DELIVERY_LIMIT} times" in (error.error_message or "")
    [completion] = await completions(streams)
    assert completion.error_code == "job_failed"


async def test_an_engine_error_after_the_first_token_ends_the_reply_without_retry(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    engine = MidReplyFailingEngine(good_tokens=3, reply_tokens=20)
    job = make_job("hi")

    delivery = await publish_and_run(job, queue, engine, streams)

    evs = await events(streams, job.stream)
    error = evs[-1]
    assert error.kind is EventKind.ERROR
    assert error.error_code == "engine_error"
    assert error.finish_reason is FinishReason.ERROR
    assert error.text == token_text(evs) == "You said: hi "
    assert [e for e in evs if e.final] == [error]
    await assert_settled(delivery)
    assert queue.pending(MODEL) == 0
    assert engine.calls == 1
    [completion] = await completions(streams)
    assert completion.finish_reason is FinishReason.ERROR
    assert completion.error_code == "engine_error"
    assert completion.text == "You said: hi "
    assert completion.usage.completion_tokens == 3


async def test_a_redelivered_job_continues_the_stream_a_dead_worker_began(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    engine = FakeEngine(reply_tokens=12)
    job = make_job("carry on")
    words = engine.reply_words(job.messages)
    # What the dead worker managed to append before it died.
    await streams.append(
        job.stream,
        [
            StreamEvent(kind=EventKind.TOKENS, text=words[0], tokens=1),
            StreamEvent(kind=EventKind.TOKENS, text=words[1] + words[2], tokens=2),
        ],
    )

    await publish_and_run(job, queue, engine, streams)

    evs = await events(streams, job.stream)
    done = evs[-1]
    assert done.kind is EventKind.DONE
    assert token_text(evs) == "".join(words)
    assert token_text(evs[2:]) == "".join(words[3:])
    assert done.text == "".join(words)
    assert done.usage is not None
    assert done.usage.completion_tokens == len(words)
    assert engine.prompts == [job.messages]
    [completion] = await completions(streams)
    assert completion.text == "".join(words)


async def test_a_job_whose_stream_already_ended_is_only_acknowledged(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    engine = FakeEngine()
    job = make_job()
    finished = [
        StreamEvent(kind=EventKind.TOKENS, text="All ", tokens=1),
        StreamEvent(kind=EventKind.DONE, text="All ", tokens=1, finish_reason=FinishReason.STOP),
    ]
    await streams.append(job.stream, finished)

    delivery = await publish_and_run(job, queue, engine, streams)

    assert await events(streams, job.stream) == finished
    assert engine.prompts == []
    assert await completions(streams) == []
    await assert_settled(delivery)
    assert queue.pending(MODEL) == 0


async def test_cancelling_the_job_task_stops_its_generation(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    # What a worker shutting down does to a job past its grace period.
    engine = FakeEngine(reply_tokens=100_000, tokens_per_second=200)
    job, _delivery, task = await start_job(queue, engine, streams)

    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0.05)

    steps, entries = engine.steps, len(await events(streams, job.stream))
    await asyncio.sleep(0.2)
    assert engine.steps == steps
    assert len(await events(streams, job.stream)) == entries
    assert not any(e.final for e in await events(streams, job.stream))


async def test_a_duplicate_delivery_waits_for_the_live_attempt_and_is_handed_back_on_stop(
    queue: MemoryJobQueue, streams: MemoryTokenStreams
) -> None:
    job = make_job()
    # Another worker holds the reply's live lease.
    held = await streams.claim(job.stream, job.model_dump_json(), lease_s=60)
    await queue.publish(job)
    delivery = await take(queue)
    engine = FakeEngine()
    task = asyncio.create_task(
        run_job(job, delivery, engine=engine, streams=streams, settings=job_settings(), leases={})
    )
    await asyncio.sleep(0.1)
    assert not task.done(), "a duplicate waits while the other attempt's lease is live"
    assert engine.prompts == []

    task.cancel()  # the worker stops
    with pytest.raises(asyncio.CancelledError):
        await task
    await assert_settled(delivery)
    assert queue.pending(MODEL) == 1  # handed back, for whoever continues
    # The live attempt still owns the reply.
    await streams.append(
        job.stream, [StreamEvent(kind=EventKind.TOKENS, text="x", tokens=1)], Fence(held.attempt, 0)
    )
