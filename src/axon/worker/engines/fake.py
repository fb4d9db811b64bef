"""A deterministic engine with a configurable speed, for unit tests and for benchmarks of
the serving path (everything but the model).

The reply echoes the last user message, then counts words until ``max_tokens`` or
``reply_tokens`` is reached, so tests can see which prompt the engine was given.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Sequence

from axon.core.errors import EngineError
from axon.core.types import ChatMessage, FinishReason, SamplingParams
from axon.models.estimate import EstimateTokenizer
from axon.worker.engines.base import Chunk, Engine


class FakeEngine(Engine):
    def __init__(
        self,
        model: str = "fake",
        *,
        context_window: int = 8192,
        tokens_per_second: float = 0.0,
        reply_tokens: int = 24,
        default_max_tokens: int = 512,
        fail_marker: str | None = None,
    ) -> None:
        self.model = model
        self.context_window = context_window
        self.tokens_per_second = tokens_per_second
        self.reply_tokens = reply_tokens
        self.default_max_tokens = default_max_tokens
        self.fail_marker = fail_marker
        self._tokenizer = EstimateTokenizer()
        #: Prompts seen, newest last: tests assert on what the engine was asked.
        self.prompts: list[list[ChatMessage]] = []
        #: Decode steps spent, all requests together (cancellation tests watch it stop).
        self.steps = 0

    @property
    def tokenizer(self) -> EstimateTokenizer:
        return self._tokenizer

    def reply_words(self, messages: Sequence[ChatMessage]) -> list[str]:
        last_user = next((m.content for m in reversed(messages) if m.role == "user"), "")
        words = ["You", "said:", *last_user.split()]
        words += [f"w{i}" for i in range(max(0, self.reply_tokens - len(words)))]
        return [w + " " for w in words]

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        self.prompts.append(list(messages))
        if self.fail_marker and self.fail_marker in messages[-1].content:
            raise EngineError("the fake engine was told to fail")
        max_tokens = params.max_tokens or self.default_max_tokens
        words = self.reply_words(messages)
        text = ""
        skipped = 0
        while skipped < len(words) and prefix.startswith(text + words[skipped]):
            text += words[skipped]
            skipped += 1
        interval = 1.0 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
        next_at = time.monotonic()
        produced = skipped
        first = True
        for word in words[skipped:]:
            if produced >= max_tokens:
                yield Chunk("", 0, FinishReason.LENGTH)
                return
            next_at += interval
            delay = next_at - time.monotonic()
            # Yield to the loop even at infinite speed so cancellation can land.
            await asyncio.sleep(max(0.0, delay))
            self.steps += 1
            text += word
            produced += 1
            if any(s in text for s in params.stop):
                yield Chunk("", 0, FinishReason.STOP)
                return
            yield Chunk(
                word,
                1,
                prompt_tokens=self.tokenizer.count_prompt(messages) if first else None,
            )
            first = False
        yield Chunk("", 0, FinishReason.STOP)
