"""The embedded CPU engine: a GGUF model run in-process by llama.cpp (llama-cpp-python).

Decoding blocks, so it runs on one dedicated thread and hands chunks to the event loop.
Generations run one at a time for now (continuous batching over llama.cpp's batch API
replaces this later); ``generate`` is the whole public surface so that swap stays local.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axon.core.errors import ConfigError, ContextWindowExceeded, EngineError
from axon.core.types import ChatMessage, FinishReason, SamplingParams
from axon.models.gguf import GgufTokenizer, check_model_file, import_llama_cpp
from axon.worker.engines.base import Chunk, Engine

log = logging.getLogger(__name__)

# OpenAI's API has no top_k or min_p; llama.cpp's server default top_k keeps sampling cheap
# (top_p over the whole 49k vocabulary sorts it every token: 3x slower), and min_p off
# leaves temperature and top_p in charge.
_TOP_K = 40
_MIN_P = 0.0


class StopFilter:
    """Holds back generated text that might be the start of a stop sequence, so that a
    stop sequence split across tokens is caught and never leaks into the reply."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return what is safe to emit, and whether a stop sequence was hit
        (everything from the stop sequence on is dropped)."""
        self.held += text
        hits = [i for i in (self.held.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.held = self.held[: min(hits)], ""
            return out, True
        keep = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.held)), keep, -1):
                if self.held.endswith(stop[:n]):
                    keep = n
                    break
        out = self.held[: len(self.held) - keep]
        self.held = self.held[len(out) :]
        return out, False

    def flush(self) -> str:
        out, self.held = self.held, ""
        return out


@dataclass(slots=True)
class _Job:
    """One generation as the decode thread sees it."""

    tokens: list[int]
    budget: int
    params: SamplingParams
    seed: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Chunk | BaseException] = field(default_factory=asyncio.Queue)
    #: Set by the consumer when it leaves; the thread checks it between decode steps.
    cancelled: bool = False

    def send(self, item: Chunk | BaseException) -> None:
        # A closed loop means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


class LlamaCppEngine(Engine):
    """Runs a GGUF chat model on the CPU with llama.cpp, one generation at a time."""

    def __init__(
        self,
        model_name: str,
        model_path: Path | str,
        *,
        context_window: int,
        threads: int,
        default_max_tokens: int,
        seed: int | None = None,
    ) -> None:
        self.model = model_name
        self.model_path = Path(model_path)
        self.context_window = context_window
        self.threads = threads or os.cpu_count() or 1
        self.default_max_tokens = default_max_tokens
        self.seed = seed
        #: Decode steps spent, all requests together (cancellation tests watch it stop).
        self.steps = 0
        self._tokenizer: GgufTokenizer | None = None
        self._llm: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._lock = asyncio.Lock()
        self._running: _Job | None = None
        self._closing = False

    @property
    def tokenizer(self) -> GgufTokenizer:
        """The tokenizer of the same file, loaded on first use (cheap: vocabulary only)."""
        if self._tokenizer is None:
            self._tokenizer = GgufTokenizer(self.model_path)
        return self._tokenizer

    @property
    def ready(self) -> bool:
        return self._llm is not None

    async def start(self) -> None:
        if self._llm is not None:
            return
        self._closing = False
        started = time.perf_counter()
        self._tokenizer = await asyncio.to_thread(lambda: self.tokenizer)
        self._llm = await asyncio.to_thread(self._load)
        # One thread owns the llama context: llama.cpp contexts are not thread-safe.
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="llamacpp")
        log.info(
            "model loaded",
            extra={
                "model": self.model,
                "model_path": str(self.model_path),
                "context_window": self.context_window,
                "threads": self.threads,
                "load_seconds": round(time.perf_counter() - started, 3),
            },
        )

    def _load(self) -> Any:
        check_model_file(self.model_path)
        llama_cpp = import_llama_cpp()
        try:
            return llama_cpp.Llama(
                str(self.model_path),
                n_ctx=self.context_window,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(
                f"Model file {self.model_path} could not be loaded ({exc}): set "
                "AXON_ENGINE__MODEL_PATH to a GGUF file, or a smaller context_window."
            ) from exc

    async def close(self) -> None:
        # Generations queued behind the lock fail instead of running on a closing engine.
        self._closing = True
        if self._running is not None:
            self._running.cancelled = True
        async with self._lock:  # waits for the running generation's thread to finish
            llm, self._llm = self._llm, None
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None
            if llm is not None:
                await asyncio.to_thread(llm.close)

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        if self._llm is None:
            raise EngineError("The llamacpp engine is not started.")
        tokenizer = self.tokenizer
        prompt, tokens = await asyncio.to_thread(self._encode, tokenizer, messages, prefix)
        if prompt >= self.context_window:
            raise ContextWindowExceeded(
                f"The prompt takes {prompt} tokens; the context window is "
                f"{self.context_window} tokens, including the reply.",
                param="messages",
            )
        max_tokens = params.max_tokens or self.default_max_tokens
        # The prefix was already part of the reply: it counts against max_tokens.
        budget = min(max_tokens - (len(tokens) - prompt), self.context_window - len(tokens))
        if budget <= 0:
            yield Chunk("", 0, FinishReason.LENGTH, prompt_tokens=prompt)
            return
        seed = params.seed if params.seed is not None else self.seed
        job = _Job(
            tokens,
            budget,
            params,
            seed if seed is not None else random.getrandbits(32),
            asyncio.get_running_loop(),
        )
        # Waiters cancelled here never reach the thread.
        await self._lock.acquire()
        try:
            if self._executor is None or self._closing:
                raise EngineError("The llamacpp engine is closed.")
            running = job.loop.run_in_executor(self._executor, self._decode, job)
        except BaseException:
            self._lock.release()
            raise
        self._running = job
        # Released when the thread is done, however the consumer leaves: the next
        # generation must never share the llama context with this one.
        running.add_done_callback(self._finished)
        first = True
        try:
            while True:
                item = await job.queue.get()
                if isinstance(item, BaseException):
                    raise item
                if first:
                    item.prompt_tokens, first = prompt, False
                yield item
                if item.finish_reason is not None:
                    return
        finally:
            job.cancelled = True
            # Returning only once the thread stopped makes aclose() a clean hand-off.
            await asyncio.shield(running)

    def _finished(self, _: object) -> None:
        self._running = None
        self._lock.release()

    @staticmethod
    def _encode(
        tokenizer: GgufTokenizer, messages: Sequence[ChatMessage], prefix: str
    ) -> tuple[int, list[int]]:
        """(prompt tokens, ids to decode): the rendered prompt, continued by ``prefix``."""
        text = tokenizer.render_prompt(messages)
        prompt = len(tokenizer.tokenize(text))
        return prompt, tokenizer.tokenize(text + prefix) if prefix else tokenizer.tokenize(text)

    def _decode(self, job: _Job) -> None:
        """Runs on the decode thread: sample until done, cancelled or out of budget."""
        try:
            self._decode_tokens(job)
        except Exception as exc:
            log.exception("llama.cpp failed while generating")
            job.send(EngineError(f"llama.cpp failed while generating: {type(exc).__name__}"))
        if job.cancelled:
            # Read only when close() stopped it; a consumer that left reads nothing.
            job.send(EngineError("The llamacpp engine closed during the generation."))

    def _decode_tokens(self, job: _Job) -> None:
        llm, tokenizer = self._llm, self.tokenizer
        if job.cancelled or llm is None:
            return
        params = job.params
        llm.set_seed(job.seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        stops = StopFilter(params.stop)
        left, unsent = job.budget, 0
        finish = FinishReason.LENGTH
        for token in llm.generate(
            job.tokens,
            temp=params.temperature,
            top_p=params.top_p,
            top_k=_TOP_K,
            min_p=_MIN_P,
            repeat_penalty=1.0,
        ):
            self.steps += 1
            if job.cancelled:
                return
            if tokenizer.is_end(token):
                finish = FinishReason.STOP
                break
            left -= 1
            unsent += 1
            text, stopped = stops.feed(decoder.decode(tokenizer.piece(token)))
            if stopped:
                job.send(Chunk(text, unsent, FinishReason.STOP))
                return
            if text:
                job.send(Chunk(text, unsent))
                unsent = 0
            if left <= 0:
                break
        # At the end a partial stop sequence is just text, but the bytes of a character cut
        # off by max_tokens are dropped: a reply should not end in U+FFFD.
        job.send(Chunk(stops.flush(), unsent, finish))
