"""Prefix-cache counts from the engines whose caches live elsewhere: vLLM's (read from its
outputs, with a stand-in for its engine) and a remote server's (read from its usage). The
llama.cpp engine's step, batch, KV and prefix metrics are tested on the real model in
``tests/engines/test_llamacpp_batching.py``."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import httpx

from axon.core.types import ChatMessage, FinishReason, SamplingParams
from axon.models.estimate import EstimateTokenizer
from axon.observability import metrics
from axon.worker.engines.openai import OpenAIEngine
from axon.worker.engines.vllm import VllmEngine

MESSAGES = [ChatMessage(role="user", content="Tell me about dragons.")]
PROMPT_IDS = list(range(40))


def prefix_cache(model: str) -> tuple[float, float]:
    """(tokens looked up, tokens found) in ``model``'s prefix cache, as exported."""
    labels = {"model": model}
    return (
        metrics.REGISTRY.get_sample_value("axon_prefix_cache_queries_tokens_total", labels) or 0,
        metrics.REGISTRY.get_sample_value("axon_prefix_cache_hits_tokens_total", labels) or 0,
    )


class StubTokenizer:
    def encode(self, messages: Sequence[ChatMessage], prefix: str = "") -> tuple[int, list[int]]:
        return len(PROMPT_IDS), PROMPT_IDS


class StubAsyncLLM:
    """Streams a reply as vLLM's engine does with DELTA outputs: every output carries the
    request's cached-token count (``None`` for a vLLM that does not report it)."""

    def __init__(self, cached: int | None) -> None:
        self.cached = cached

    async def generate(
        self, prompt: Any, params: Any, request_id: str
    ) -> AsyncGenerator[Any, None]:
        pieces = ["", "Drag", "ons ", "fly."]  # the first holds its text back
        for i, text in enumerate(pieces):
            last = i == len(pieces) - 1
            completion = SimpleNamespace(
                text=text, token_ids=[i], finish_reason="stop" if last else None
            )
            output = SimpleNamespace(outputs=[completion], finished=last)
            if self.cached is not None:
                output.num_cached_tokens = self.cached
            yield output


def vllm_engine(model: str, cached: int | None) -> VllmEngine:
    engine = VllmEngine(model, "/nonexistent", context_window=2048, default_max_tokens=64)
    engine._engine = StubAsyncLLM(cached)
    engine._tokenizer = StubTokenizer()  # type: ignore[assignment]
    engine._sampling_params = lambda params, budget: None  # type: ignore[method-assign]
    return engine


async def test_vllm_counts_each_requests_prompt_and_cached_tokens_once() -> None:
    model = f"vllm-{uuid4().hex[:8]}"
    engine = vllm_engine(model, cached=32)

    for _ in range(2):
        chunks = [c async for c in engine.generate(MESSAGES, SamplingParams())]
        assert chunks[-1].finish_reason is FinishReason.STOP

    # Once per request, not once per output: four outputs each.
    assert prefix_cache(model) == (2 * len(PROMPT_IDS), 2 * 32)


async def test_vllm_without_a_cached_token_count_counts_nothing() -> None:
    model = f"vllm-{uuid4().hex[:8]}"
    engine = vllm_engine(model, cached=None)

    assert [c async for c in engine.generate(MESSAGES, SamplingParams())]

    assert prefix_cache(model) == (0, 0)


def sse_server(usage: dict[str, Any]) -> httpx.MockTransport:
    events = [
        {"choices": [{"index": 0, "delta": {"content": "Dragons fly."}}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {"choices": [], "usage": usage},
    ]
    body = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(reply)


async def remote_reply(model: str, usage: dict[str, Any]) -> None:
    client = httpx.AsyncClient(base_url="http://model-server/v1", transport=sse_server(usage))
    engine = OpenAIEngine(model, client, tokenizer=EstimateTokenizer())
    async with client:
        chunks = [c async for c in engine.generate(MESSAGES, SamplingParams())]
    assert chunks[-1].finish_reason is FinishReason.STOP


async def test_a_remote_servers_reported_cached_tokens_are_counted() -> None:
    model = f"remote-{uuid4().hex[:8]}"
    usage = {
        "prompt_tokens": 50,
        "completion_tokens": 3,
        "prompt_tokens_details": {"cached_tokens": 48},
    }

    await remote_reply(model, usage)

    assert prefix_cache(model) == (50, 48)


async def test_a_remote_server_that_reports_no_cache_counts_nothing() -> None:
    model = f"remote-{uuid4().hex[:8]}"

    await remote_reply(model, {"prompt_tokens": 50, "completion_tokens": 3})

    assert prefix_cache(model) == (0, 0)
