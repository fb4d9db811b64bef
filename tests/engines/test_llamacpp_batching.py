"""Continuous batching and prefix reuse in the llamacpp engine, against the real model.

No timing assertions: the decode loop is step-locked, so the tests assert on order, on
counters (``engine.stats``) and on text, which at temperature 0 must not depend on what
else shares the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from axon.core.errors import EngineError
from axon.core.types import ChatMessage, FinishReason, SamplingParams
from axon.observability import metrics
from axon.worker.engines.base import Chunk
from axon.worker.engines.llamacpp import LlamaCppEngine

pytestmark = pytest.mark.asyncio(loop_scope="module")

CAPACITY = 4
CHUNK = 32


def user(text: str) -> list[ChatMessage]:
    return [ChatMessage(role="user", content=text)]


COUNT = user("Count from 1 to 10, separated by commas.")
# Greedy, these run far past any max_tokens used here.
COUNT_LONG = user("Count from 1 to 100, separated by commas.")
STORY = user("Write a long story about a dragon and a knight.")
OTHERS = [
    user("Explain what a CPU does in simple words."),
    user("Describe a walk in the forest."),
    user("Give three tips for learning to cook."),
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24)


async def collect(engine: LlamaCppEngine, messages: list[ChatMessage], **kw: Any) -> list[Chunk]:
    return [chunk async for chunk in engine.generate(messages, kw.pop("params", GREEDY), **kw)]


def text_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def cells_held(engine: LlamaCppEngine) -> list[int]:
    """Positions each slot holds in llama.cpp's KV cache (read while the engine is idle)."""
    import llama_cpp

    decoder = engine._decoder
    assert decoder is not None
    assert decoder.running == 0
    return [llama_cpp.llama_memory_seq_pos_max(decoder._mem, slot) + 1 for slot in range(CAPACITY)]


@contextlib.asynccontextmanager
async def watching(engine: LlamaCppEngine) -> AsyncIterator[list[tuple[int, int]]]:
    """Samples (running, waiting) while the body runs."""
    seen: list[tuple[int, int]] = []

    async def poll() -> None:
        while True:
            seen.append((engine.running, engine.waiting))
            await asyncio.sleep(0.002)

    task = asyncio.create_task(poll())
    try:
        yield seen
    finally:
        task.cancel()


async def _engine(model_path: Path, *, prefix_reuse: bool) -> LlamaCppEngine:
    engine = LlamaCppEngine(
        "smollm2",
        model_path,
        context_window=1024,
        threads=0,
        default_max_tokens=64,
        capacity=CAPACITY,
        prefill_chunk=CHUNK,
        prefix_reuse=prefix_reuse,
    )
    await engine.start()
    return engine


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def batching(model_path: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = await _engine(model_path, prefix_reuse=True)
    yield engine
    await engine.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def no_reuse(model_path: Path) -> AsyncIterator[LlamaCppEngine]:
    engine = await _engine(model_path, prefix_reuse=False)
    yield engine
    await engine.close()


async def test_concurrent_generations_each_equal_their_solo_output(
    no_reuse: LlamaCppEngine,
) -> None:
    conversations = [COUNT, *OTHERS]
    solo = [text_of(await collect(no_reuse, m)) for m in conversations]

    async with watching(no_reuse) as seen:
        together = await asyncio.gather(*(collect(no_reuse, m) for m in conversations))

    assert max(running for running, _ in seen) == CAPACITY  # they did share the batch
    assert [text_of(chunks) for chunks in together] == solo
    assert all(chunks[-1].finish_reason is not None for chunks in together)
    assert len(set(solo)) == len(solo)  # distinct replies: no sequence read another's cells


async def test_a_request_joins_a_running_generation(no_reuse: LlamaCppEngine) -> None:
    long_params = SamplingParams(temperature=0.0, max_tokens=80)
    solo_long = text_of(await collect(no_reuse, COUNT_LONG, params=long_params))
    solo_short = text_of(await collect(no_reuse, OTHERS[0]))

    stream = no_reuse.generate(COUNT_LONG, long_params)
    head = [await anext(stream) for _ in range(5)]
    joined = await collect(no_reuse, OTHERS[0])
    assert no_reuse.running == 1  # the long one is still decoding: the short one joined it
    tail = [chunk async for chunk in stream]

    assert text_of(joined) == solo_short
    assert text_of(head + tail) == solo_long


async def test_cancelling_one_sequence_frees_its_slot_and_spares_the_others(
    no_reuse: LlamaCppEngine,
) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=80)
    prompts = [COUNT_LONG, STORY, *OTHERS[:2]]
    solo = [text_of(await collect(no_reuse, m, params=params)) for m in prompts]

    streams = [no_reuse.generate(m, params) for m in prompts]
    heads = [[await anext(s)] for s in streams]
    assert (no_reuse.running, no_reuse.waiting) == (CAPACITY, 0)
    await streams[1].aclose()  # type: ignore[attr-defined]
    assert no_reuse.running == CAPACITY - 1  # it left the batch before aclose() returned

    # The batch was full: the newcomer can only run in the cancelled sequence's slot.
    newcomer = await collect(no_reuse, COUNT)
    assert no_reuse.running == CAPACITY - 1  # the other three are still generating
    kept = [0, 2, 3]
    tails = await asyncio.gather(*(collect_rest(streams[i]) for i in kept))

    assert text_of(newcomer).startswith("1, 2, 3")
    for i, tail in zip(kept, tails, strict=True):
        assert text_of(heads[i] + tail) == solo[i]
    assert cells_held(no_reuse) == [0] * CAPACITY  # without reuse, every cell is freed


async def test_a_new_sequence_fills_the_gap_a_finished_one_left(
    no_reuse: LlamaCppEngine,
) -> None:
    # llama.cpp runs one forward pass per run of consecutive sequence ids: keep them together.
    decoder = no_reuse._decoder
    assert decoder is not None
    params = SamplingParams(temperature=0.0, max_tokens=80)
    streams = [no_reuse.generate(m, params) for m in (COUNT_LONG, STORY, OTHERS[0])]
    for stream in streams:
        await anext(stream)
    slots = [seq.slot for seq in decoder._active]
    assert sorted(slots) == list(range(min(slots), min(slots) + 3))
    middle = sorted(slots)[1]
    await streams[slots.index(middle)].aclose()  # type: ignore[attr-defined]

    newcomer = no_reuse.generate(COUNT, GREEDY)
    await anext(newcomer)

    assert decoder._active[-1].slot == middle
    for stream in [*streams, newcomer]:
        await stream.aclose()  # type: ignore[attr-defined]


async def collect_rest(stream: Any) -> list[Chunk]:
    return [chunk async for chunk in stream]


async def test_stop_sequences_and_max_tokens_apply_per_sequence(
    batching: LlamaCppEngine,
) -> None:
    stop_4, stop_5, five, three = await asyncio.gather(
        collect(batching, COUNT, params=SamplingParams(temperature=0.0, stop=("4",))),
        collect(batching, COUNT, params=SamplingParams(temperature=0.0, stop=(", 5",))),
        collect(batching, STORY, params=SamplingParams(temperature=0.0, max_tokens=5)),
        collect(batching, COUNT_LONG, params=SamplingParams(temperature=0.0, max_tokens=3)),
    )

    assert (text_of(stop_4), stop_4[-1].finish_reason) == ("1, 2, 3, ", FinishReason.STOP)
    assert (text_of(stop_5), stop_5[-1].finish_reason) == ("1, 2, 3, 4", FinishReason.STOP)
    assert sum(c.tokens for c in five) == 5
    assert five[-1].finish_reason is FinishReason.LENGTH
    assert sum(c.tokens for c in three) == 3
    assert three[-1].finish_reason is FinishReason.LENGTH


async def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(
    batching: LlamaCppEngine,
) -> None:
    long_prompt = user("Summarise this text. " + "The quick brown fox jumps over the dog. " * 60)
    runner = batching.generate(COUNT_LONG, SamplingParams(temperature=0.0, max_tokens=300))
    await anext(runner)
    before = dataclasses.replace(batching.stats)
    first_token = asyncio.Event()

    async def read_long() -> None:
        async for _ in batching.generate(long_prompt, SamplingParams(max_tokens=4)):
            first_token.set()

    reader = asyncio.create_task(read_long())
    received = 0  # the runner's tokens between the long prompt's arrival and its first token
    async for chunk in runner:
        if first_token.is_set():
            break
        received += chunk.tokens
    await runner.aclose()  # type: ignore[attr-defined]
    await reader

    prefilled = batching.stats.prefilled_tokens - before.prefilled_tokens
    chunks = -(-prefilled // CHUNK)
    assert prefilled > 10 * CHUNK
    # Every chunk of the prompt went into a step that also decoded the runner...
    assert batching.stats.mixed_steps - before.mixed_steps >= chunks
    # ...and the runner's tokens kept coming while the prompt was being read.
    assert received >= chunks - 1


async def test_the_next_turn_reuses_the_previous_one(
    batching: LlamaCppEngine, no_reuse: LlamaCppEngine
) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=48)
    turn = user("Tell me about dragons.")
    for question in ("Why do they breathe fire?", "Where do they live?"):
        reply = text_of(await collect(batching, turn, params=params))
        turn = [*turn, ChatMessage(role="assistant", content=reply), *user(question)]
        before = dataclasses.replace(batching.stats)

        chunks = await collect(batching, turn, params=params)

        prompt = batching.tokenizer.count_prompt(turn)
        prefilled = batching.stats.prefilled_tokens - before.prefilled_tokens
        reused = batching.stats.reused_tokens - before.reused_tokens
        assert prefilled + reused == prompt
        assert prefilled < prompt // 3  # only the new message and the generation prompt
        assert text_of(chunks) == text_of(await collect(no_reuse, turn, params=params))
    # The finished sequence keeps its cells (prompt and reply) for the next turn.
    assert max(cells_held(batching)) >= prompt


async def test_without_reuse_every_prompt_is_prefilled_in_full(no_reuse: LlamaCppEngine) -> None:
    before = dataclasses.replace(no_reuse.stats)
    await collect(no_reuse, COUNT)
    await collect(no_reuse, COUNT)

    assert no_reuse.stats.reused_tokens == before.reused_tokens
    prompt = no_reuse.tokenizer.count_prompt(COUNT)
    assert no_reuse.stats.prefilled_tokens - before.prefilled_tokens == 2 * prompt


async def test_capacity_is_respected(batching: LlamaCppEngine) -> None:
    async with watching(batching) as seen:
        results = await asyncio.gather(*(collect(batching, COUNT) for _ in range(CAPACITY + 2)))

    assert max(running for running, _ in seen) == CAPACITY
    assert (CAPACITY, 2) in seen  # the two extra requests waited for a slot
    assert len({text_of(chunks) for chunks in results}) == 1
    assert all(chunks[-1].finish_reason is not None for chunks in results)
    assert (batching.running, batching.waiting) == (0, 0)


async def test_a_failing_sequence_does_not_take_the_others_down(
    batching: LlamaCppEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = text_of(await collect(batching, COUNT))
    decoder = batching._decoder
    assert decoder is not None
    real = decoder._decode

    def poisoned(entries: list[Any]) -> None:
        if any(seq.request.seed == 666 for seq, *_ in entries):
            raise RuntimeError("llama_decode returned -1")
        real(entries)

    monkeypatch.setattr(decoder, "_decode", poisoned)
    good, bad = await asyncio.gather(
        collect(batching, COUNT),
        collect(batching, STORY, params=SamplingParams(temperature=0.0, seed=666)),
        return_exceptions=True,
    )
    monkeypatch.undo()

    assert isinstance(bad, EngineError)
    assert not isinstance(good, BaseException)
    assert text_of(good) == expected
    assert text_of(await collect(batching, STORY, params=GREEDY))


def exported(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, {"model": "smollm2", **labels}) or 0.0


async def test_a_batched_run_records_its_steps_batch_sizes_and_kv_use(
    batching: LlamaCppEngine,
) -> None:
    steps_before = batching.stats.steps
    timed = exported("axon_engine_step_duration_seconds_count")
    batches = exported("axon_engine_batch_size_sequences_count")
    singles = exported("axon_engine_batch_size_sequences_bucket", le="1.0")
    kv_seen: list[float] = []

    async def poll_kv() -> None:
        while True:
            kv_seen.append(exported("axon_engine_kv_cache_usage_ratio"))
            await asyncio.sleep(0.01)

    poller = asyncio.create_task(poll_kv())
    try:
        replies = await asyncio.gather(*(collect(batching, m) for m in OTHERS))
    finally:
        poller.cancel()

    steps = batching.stats.steps - steps_before
    # One observation per forward pass: never per token or per sequence.
    assert exported("axon_engine_step_duration_seconds_count") - timed == steps
    assert exported("axon_engine_batch_size_sequences_count") - batches == steps
    batched = steps - (exported("axon_engine_batch_size_sequences_bucket", le="1.0") - singles)
    assert batched > 0  # some steps decoded more than one sequence
    # While they ran, their cells were in use; at most their prompts and replies, out of
    # every slot's context window.
    held = sum(
        batching.tokenizer.count_prompt(m) + sum(c.tokens for c in r)
        for m, r in zip(OTHERS, replies, strict=True)
    )
    assert 0 < max(kv_seen) <= held / (CAPACITY * 1024)
    # Idle, nothing is in use: what finished sequences left for reuse does not count.
    assert exported("axon_engine_kv_cache_usage_ratio") == 0


async def test_a_repeated_prompt_counts_as_prefix_cache_hits(
    batching: LlamaCppEngine, no_reuse: LlamaCppEngine
) -> None:
    prompt = batching.tokenizer.count_prompt(COUNT)
    await collect(batching, COUNT)
    queries = exported("axon_prefix_cache_queries_tokens_total")
    hits = exported("axon_prefix_cache_hits_tokens_total")

    await collect(batching, COUNT)

    assert exported("axon_prefix_cache_queries_tokens_total") - queries == prompt
    # All but the last token, which is read again for its logits.
    assert exported("axon_prefix_cache_hits_tokens_total") - hits == prompt - 1

    # Without reuse nothing is looked up, so nothing is found either.
    queries = exported("axon_prefix_cache_queries_tokens_total")
    hits = exported("axon_prefix_cache_hits_tokens_total")
    await collect(no_reuse, COUNT)
    assert exported("axon_prefix_cache_queries_tokens_total") == queries
    assert exported("axon_prefix_cache_hits_tokens_total") == hits
