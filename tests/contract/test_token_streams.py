"""The token stream contract, run over every backend: ordered entries readable from any id,
blocking reads, cancel flags, and completions shared out by a consumer group."""

from __future__ import annotations

import asyncio
import time
from uuid import uuid4

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from axon.core.errors import Unavailable
from axon.core.types import Completion, EventKind, FinishReason, StreamEvent, Usage
from axon.streaming.base import ClaimState, Fence, Fenced, TokenStreams, parse_id
from axon.streaming.redis import RedisTokenStreams


def tokens(text: str) -> StreamEvent:
    return StreamEvent(kind=EventKind.TOKENS, text=text, tokens=1)


DONE = StreamEvent(
    kind=EventKind.DONE,
    text="abc",
    finish_reason=FinishReason.STOP,
    usage=Usage(prompt_tokens=3, completion_tokens=3),
)


def completion(n: int) -> Completion:
    return Completion(
        request_id=f"req-{n}",
        session_id=None,
        model="m",
        text=f"reply {n}",
        finish_reason=FinishReason.STOP,
        usage=Usage(prompt_tokens=1, completion_tokens=2),
    )


def new_request() -> str:
    return uuid4().hex


async def test_append_then_read_from_the_start(streams: TokenStreams) -> None:
    rid = new_request()
    last = await streams.append(rid, [tokens("a"), tokens("b")])
    assert await streams.append(rid, [DONE]) != last

    entries = await streams.read(rid)

    assert [event for _, event in entries] == [tokens("a"), tokens("b"), DONE]
    ids = [parse_id(entry_id) for entry_id, _ in entries]
    assert ids == sorted(set(ids)), "ids strictly increase"
    assert entries[1][0] == last, "append returns the id of its last entry"


async def test_read_after_any_id_has_no_gap_and_no_repeat(streams: TokenStreams) -> None:
    rid = new_request()
    await streams.append(rid, [tokens("a"), tokens("b"), tokens("c")])
    await streams.append(rid, [tokens("d"), DONE])
    everything = await streams.read(rid)
    assert len(everything) == 5

    for i, (entry_id, _) in enumerate(everything):
        assert await streams.read(rid, after=entry_id) == everything[i + 1 :]


async def test_unknown_stream_reads_empty(streams: TokenStreams) -> None:
    assert await streams.read(new_request()) == []


async def test_blocking_read_wakes_on_append(streams: TokenStreams) -> None:
    rid = new_request()
    first = await streams.append(rid, [tokens("a")])
    reader = asyncio.create_task(streams.read(rid, after=first, timeout_s=5.0))
    await asyncio.sleep(0.1)
    assert not reader.done()

    started = time.monotonic()
    await streams.append(rid, [tokens("b")])
    entries = await asyncio.wait_for(reader, 2.0)

    assert [event.text for _, event in entries] == ["b"]
    assert time.monotonic() - started < 1.0


async def test_blocking_read_times_out_with_nothing(streams: TokenStreams) -> None:
    rid = new_request()
    last = await streams.append(rid, [tokens("a")])

    started = time.monotonic()
    assert await streams.read(rid, after=last, timeout_s=0.2) == []
    assert 0.15 <= time.monotonic() - started < 2.0
    assert await streams.read(new_request(), timeout_s=0.1) == []


async def test_cancel_flag(streams: TokenStreams) -> None:
    rid, other = new_request(), new_request()
    assert not await streams.is_cancelled(rid)

    await streams.cancel(rid)

    assert await streams.is_cancelled(rid)
    assert not await streams.is_cancelled(other)


async def test_only_the_current_attempt_may_write(streams: TokenStreams) -> None:
    rid = new_request()
    first = await streams.claim(rid, "{}", lease_s=0.2)
    assert (first.state, first.attempt, first.failures) == (ClaimState.OWNED, 1, 0)
    await streams.append(rid, [tokens("a")], Fence(first.attempt, 0))

    # A duplicate delivery while the lease is live waits; once the lease lapses (the first
    # worker stopped renewing it), the next claim takes over and counts the failure.
    assert (await streams.claim(rid, "{}", lease_s=0.2)).state is ClaimState.BUSY
    await asyncio.sleep(0.3)
    second = await streams.claim(rid, "{}", lease_s=5)
    assert (second.state, second.attempt, second.failures) == (ClaimState.OWNED, 2, 1)

    with pytest.raises(Fenced):
        await streams.append(rid, [tokens("stale")], Fence(first.attempt, 1))
    assert await streams.renew([(rid, first.attempt), (rid, second.attempt)], 5) == {rid}
    await streams.append(rid, [tokens("b")], Fence(second.attempt, 1))
    await streams.append(rid, [DONE], Fence(second.attempt, 2))
    assert [e.text for _, e in await streams.read(rid)] == ["a", "b", "abc"]
    assert (await streams.claim(rid, "{}", lease_s=5)).state is ClaimState.FINISHED


async def test_a_reply_has_one_final_event(streams: TokenStreams) -> None:
    rid = new_request()
    await streams.append(rid, [tokens("abc"), DONE])
    late = StreamEvent(kind=EventKind.ERROR, text="", finish_reason=FinishReason.ERROR)
    await streams.append(rid, [late])  # a late writer with no fence (an expiry, a dead letter)
    assert [e for _, e in await streams.read(rid) if e.final] == [DONE]


async def test_a_retried_batch_is_not_written_twice(streams: TokenStreams) -> None:
    rid = new_request()
    claim = await streams.claim(rid, "{}", lease_s=5)
    await streams.append(rid, [tokens("ab")], Fence(claim.attempt, 0))
    # The same batch again (its reply was lost on the way back): a no-op.
    await streams.append(rid, [tokens("ab")], Fence(claim.attempt, 0))
    await streams.append(rid, [tokens("c")], Fence(claim.attempt, 2))
    assert [e.text for _, e in await streams.read(rid)] == ["ab", "c"]


async def test_release_hands_back_without_counting_unless_failed(streams: TokenStreams) -> None:
    rid = new_request()
    first = await streams.claim(rid, "{}", lease_s=5)
    await streams.release(rid, first.attempt, failed=False)
    second = await streams.claim(rid, "{}", lease_s=5)
    assert (second.state, second.failures) == (ClaimState.OWNED, 0)
    await streams.release(rid, second.attempt, failed=True)
    third = await streams.claim(rid, "{}", lease_s=5)
    assert (third.attempt, third.failures) == (3, 1)


async def test_expired_leases_are_taken_once_and_fenced(streams: TokenStreams) -> None:
    rid = new_request()
    claim = await streams.claim(rid, '{"job": 1}', lease_s=0.1)
    await asyncio.sleep(0.2)

    taken = await streams.take_expired()
    assert '{"job": 1}' in taken
    assert '{"job": 1}' not in await streams.take_expired()
    with pytest.raises(Fenced):
        await streams.append(rid, [tokens("late")], Fence(claim.attempt, 0))
    # The job published again is claimed at once: the lapsed attempt counted as failed.
    again = await streams.claim(rid, "{}", lease_s=5)
    assert (again.state, again.failures) == (ClaimState.OWNED, 1)


async def test_consumers_of_one_group_get_distinct_completions(streams: TokenStreams) -> None:
    for n in range(4):
        await streams.publish_completion(completion(n))

    a = await streams.read_completions("store", "a", count=2, timeout_s=1.0)
    b = await streams.read_completions("store", "b", count=2, timeout_s=1.0)

    assert len(a) == len(b) == 2
    assert not {cid for cid, _ in a} & {cid for cid, _ in b}
    assert sorted(c.request_id for _, c in a + b) == [f"req-{n}" for n in range(4)]
    assert await streams.read_completions("store", "c", timeout_s=0.1) == []
    # Another group keeps its own position.
    other = await streams.read_completions("audit", "x", count=10, timeout_s=1.0)
    assert [c for _, c in other] == [completion(n) for n in range(4)]


async def test_read_completions_waits_for_a_publish(streams: TokenStreams) -> None:
    assert await streams.read_completions("store", "a", timeout_s=0.1) == []
    reader = asyncio.create_task(streams.read_completions("store", "a", timeout_s=5.0))
    await asyncio.sleep(0.1)

    await streams.publish_completion(completion(1))

    got = await asyncio.wait_for(reader, 2.0)
    assert [c for _, c in got] == [completion(1)]


async def test_unacked_completion_is_reclaimed_by_another_consumer(
    streams: TokenStreams, claim_after_s: float
) -> None:
    await streams.publish_completion(completion(1))
    await streams.publish_completion(completion(2))
    (acked_id, _), (dropped_id, dropped) = await streams.read_completions(
        "store", "dies", count=10, timeout_s=1.0
    )
    await streams.ack_completion("store", acked_id)
    # Not idle long enough yet: nobody else may take it.
    assert await streams.read_completions("store", "survivor", timeout_s=0.1) == []

    await asyncio.sleep(claim_after_s + 0.1)
    reclaimed = await streams.read_completions("store", "survivor", timeout_s=0.1)

    assert reclaimed == [(dropped_id, dropped)]
    await streams.ack_completion("store", dropped_id)
    await asyncio.sleep(claim_after_s + 0.1)
    assert await streams.read_completions("store", "third", timeout_s=0.1) == []


@pytest.mark.integration
async def test_redis_stream_expiry(redis_client: tuple[Redis, str]) -> None:
    client, prefix = redis_client
    streams = RedisTokenStreams(client, prefix=prefix, ttl_s=60, maxlen=100, active_ttl_s=900)
    rid = new_request()

    await streams.append(rid, [tokens("a")])
    assert 60 < await client.ttl(f"{prefix}stream:{rid}") <= 900, "a live stream outlasts ttl_s"
    await streams.append(rid, [tokens("b"), DONE])
    assert 0 < await client.ttl(f"{prefix}stream:{rid}") <= 60, "a finished one keeps ttl_s"

    await streams.cancel(rid)
    assert await client.ttl(f"{prefix}cancel:{rid}") > 0, "cancel flags expire"


async def test_redis_unreachable_raises_unavailable() -> None:
    client = Redis(port=1, retry=Retry(NoBackoff(), 0))
    streams = RedisTokenStreams(client, prefix="x:", ttl_s=60, maxlen=100)
    try:
        with pytest.raises(Unavailable):
            await streams.ping()
        with pytest.raises(Unavailable):
            await streams.append("r", [tokens("a")])
        with pytest.raises(Unavailable):
            await streams.read("r", timeout_s=0.1)
        with pytest.raises(Unavailable):
            await streams.read_completions("g", "c", timeout_s=0.1)
    finally:
        await client.aclose()
