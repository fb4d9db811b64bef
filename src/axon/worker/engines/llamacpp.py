"""The embedded CPU engine: a GGUF model run in-process by llama.cpp (llama-cpp-python).

Generations are batched continuously: one decode thread (``llamacpp_batch``) steps every
running sequence together and hands each request's text back to the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path

from axon.core.errors import EngineError
from axon.core.types import ChatMessage, FinishReason, SamplingParams
from axon.models.gguf import GgufTokenizer
from axon.worker.engines.base import Chunk, Engine, reply_budget
from axon.worker.engines.llamacpp_batch import BatchDecoder, DecoderStats
from axon.worker.engines.llamacpp_sequence import Request, StopFilter

__all__ = ["DecoderStats", "LlamaCppEngine", "StopFilter"]

log = logging.getLogger(__name__)


class LlamaCppEngine(Engine):
    """Runs a GGUF chat model on the CPU with llama.cpp, ``capacity`` sequences at a time.

    The KV cache holds ``capacity`` x ``context_window`` tokens; each sequence gets its
    own ``context_window``. ``prefill_chunk`` caps the prompt tokens read per decode step,
    which bounds how long a new prompt delays the streams already running.
    ``prefix_reuse`` keeps finished sequences' KV cells so that a prompt starting with
    one of them (the next turn of a conversation) reads only its new tokens.
    """

    def __init__(
        self,
        model_name: str,
        model_path: Path | str,
        *,
        context_window: int,
        threads: int,
        default_max_tokens: int,
        seed: int | None = None,
        capacity: int = 4,
        prefill_chunk: int = 128,
        prefix_reuse: bool = True,
    ) -> None:
        self.model = model_name
        self.model_path = Path(model_path)
        self.context_window = context_window
        self.threads = threads or os.cpu_count() or 1
        self.default_max_tokens = default_max_tokens
        self.seed = seed
        self.capacity = capacity
        self.prefill_chunk = prefill_chunk
        self.prefix_reuse = prefix_reuse
        self._tokenizer: GgufTokenizer | None = None
        self._decoder: BatchDecoder | None = None
        # Counters survive a restart, so that a test or benchmark may compare them freely.
        self._stats = DecoderStats()

    @property
    def tokenizer(self) -> GgufTokenizer:
        """The tokenizer of the same file, loaded on first use (cheap: vocabulary only)."""
        if self._tokenizer is None:
            self._tokenizer = GgufTokenizer(self.model_path)
        return self._tokenizer

    @property
    def ready(self) -> bool:
        return self._decoder is not None

    @property
    def running(self) -> int:
        return self._decoder.running if self._decoder is not None else 0

    @property
    def waiting(self) -> int:
        return self._decoder.waiting if self._decoder is not None else 0

    @property
    def stats(self) -> DecoderStats:
        """Decode steps, mixed prefill/decode steps, prompt tokens prefilled and reused."""
        return self._stats

    @property
    def steps(self) -> int:
        """Decode steps spent, all requests together (cancellation tests watch it stop)."""
        return self._stats.steps

    async def start(self) -> None:
        if self._decoder is not None:
            return
        started = time.perf_counter()
        tokenizer = await asyncio.to_thread(lambda: self.tokenizer)
        decoder = BatchDecoder(
            self.model_path,
            tokenizer,
            model=self.model,
            capacity=self.capacity,
            context_window=self.context_window,
            threads=self.threads,
            prefill_chunk=self.prefill_chunk,
            prefix_reuse=self.prefix_reuse,
        )
        decoder.stats = self._stats
        await asyncio.to_thread(decoder.load)
        decoder.start()
        self._decoder = decoder
        log.info(
            "model loaded",
            extra={
                "model": self.model,
                "model_path": str(self.model_path),
                "context_window": self.context_window,
                "capacity": self.capacity,
                "threads": self.threads,
                "load_seconds": round(time.perf_counter() - started, 3),
            },
        )

    async def close(self) -> None:
        # Running and waiting generations fail with EngineError; new ones are refused.
        decoder, self._decoder = self._decoder, None
        if decoder is not None:
            await asyncio.to_thread(decoder.close)

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        decoder = self._decoder
        if decoder is None:
            raise EngineError("The llamacpp engine is not started.")
        tokenizer = self.tokenizer
        prompt, tokens = await asyncio.to_thread(self._encode, tokenizer, messages, prefix)
        budget = reply_budget(
            prompt=prompt,
            total=len(tokens),
            max_tokens=params.max_tokens or self.default_max_tokens,
            context_window=self.context_window,
        )
        if budget <= 0:
            yield Chunk("", 0, FinishReason.LENGTH, prompt_tokens=prompt)
            return
        seed = params.seed if params.seed is not None else self.seed
        request = Request(
            tokens,
            budget,
            params,
            seed if seed is not None else random.getrandbits(32),
            asyncio.get_running_loop(),
        )
        decoder.submit(request)
        first = True
        try:
            while True:
                item = await request.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if first:
                    item.prompt_tokens, first = prompt, False
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            if not request.released.is_set():
                decoder.cancel(request)
                # Returning only once the sequence left the batch makes aclose() a clean
                # hand-off: no decode step is spent on it afterwards.
                await asyncio.shield(request.released.wait())

    @staticmethod
    def _encode(
        tokenizer: GgufTokenizer, messages: Sequence[ChatMessage], prefix: str
    ) -> tuple[int, list[int]]:
        """(prompt tokens, ids to decode): the rendered prompt, continued by ``prefix``."""
        tokens = tokenizer.encode_prompt(messages)
        if not prefix:
            return len(tokens), tokens
        # The prefix is the model's own reply so far: plain text, like any message text.
        return len(tokens), tokens + tokenizer.tokenize(prefix, special=False, add_bos=False)
