"""One request inside the llama.cpp batch decoder: its hand-off to the event loop, its
sampler, and how its sampled tokens become text chunks and a finish reason."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from axon.core.types import FinishReason, SamplingParams
from axon.models.gguf import GgufTokenizer
from axon.worker.engines.base import Chunk

# OpenAI's API has no top_k or min_p; llama.cpp's server default top_k keeps sampling cheap
# (top_p over the whole 49k vocabulary sorts it every token: 3x slower).
TOP_K = 40


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


#: What the thread hands over: text, an error, or None for "released".
_Item = Chunk | BaseException | None


class Outbox:
    """What the decode thread hands to event loops during one step, posted with one
    wake-up per loop rather than one per token: fewer syscalls and loop iterations
    competing with llama.cpp's threads for the cores."""

    def __init__(self) -> None:
        self._items: list[tuple[Request, _Item]] = []

    def put(self, request: Request, item: _Item) -> None:
        self._items.append((request, item))

    def flush(self) -> None:
        if not self._items:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Request, _Item]]] = {}
        for request, item in self._items:
            by_loop.setdefault(request.loop, []).append((request, item))
        self._items = []
        for loop, items in by_loop.items():
            # A closed loop means nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_deliver, items)


def _deliver(items: list[tuple[Request, _Item]]) -> None:
    for request, item in items:
        if item is None:
            request.released.set()
        else:
            request.queue.put_nowait(item)


@dataclass(eq=False, slots=True)
class Request:
    """One generation as both sides see it: the event loop fills it and reads ``queue``;
    the decode thread reads it and answers only through ``send`` and ``release``."""

    #: Ids to decode: the rendered prompt, continued by any prefix of the reply.
    tokens: list[int]
    #: New tokens allowed (max_tokens less the prefix, and what the context still holds).
    budget: int
    params: SamplingParams
    seed: int
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[Chunk | BaseException] = field(default_factory=asyncio.Queue)
    #: Set (on the loop) once the decode thread no longer holds the request in any form.
    released: asyncio.Event = field(default_factory=asyncio.Event)
    #: Set by the consumer when it leaves; the thread checks it between decode steps.
    cancelled: bool = False
    #: Where the decode thread's answers go until its next flush (set on submission).
    outbox: Outbox = field(default_factory=Outbox)

    def send(self, item: Chunk | BaseException) -> None:
        self.outbox.put(self, item)

    def release(self) -> None:
        """Say the thread holds the request no more (after anything it sent)."""
        self.outbox.put(self, None)


class Sampler:
    """A per-sequence llama.cpp sampler chain: greedy at temperature 0, otherwise top-k,
    top-p, temperature and a seeded draw, so each request's randomness is its own."""

    def __init__(self, llama_cpp: Any, params: SamplingParams, seed: int) -> None:
        self._llama_cpp = llama_cpp
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if params.temperature <= 0.0:
            parts = [llama_cpp.llama_sampler_init_greedy()]
        else:
            parts = [
                llama_cpp.llama_sampler_init_top_k(TOP_K),
                llama_cpp.llama_sampler_init_top_p(params.top_p, 1),
                llama_cpp.llama_sampler_init_temp(params.temperature),
                llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF),
            ]
        for part in parts:
            llama_cpp.llama_sampler_chain_add(chain, part)  # the chain owns it from here
        self._chain: Any = chain

    def sample(self, ctx: Any, index: int) -> int:
        """A token from the logits of the batch's ``index``-th token."""
        token: int = self._llama_cpp.llama_sampler_sample(self._chain, ctx, index)
        return token

    def close(self) -> None:
        if self._chain is not None:
            self._llama_cpp.llama_sampler_free(self._chain)
            self._chain = None


class Running:
    """A request holding a slot: where its prompt stands and what it has produced.

    Lives on the decode thread only.
    """

    def __init__(
        self, request: Request, slot: int, start: int, sampler: Sampler, tokenizer: GgufTokenizer
    ) -> None:
        self.request = request
        self.slot = slot
        #: Positions already in the slot's KV cells (reused prefix, then decoded tokens).
        self.n_past = start
        #: The token to decode next once the prompt is in (the last one sampled).
        self.next_token = -1
        self.sampler = sampler
        self._tokenizer = tokenizer
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopFilter(request.params.stop)
        self._left = request.budget
        self._unsent = 0

    @property
    def prefilling(self) -> bool:
        return self.n_past < len(self.request.tokens)

    def pending(self, limit: int) -> list[int]:
        """Up to ``limit`` prompt tokens not yet in the KV cells."""
        return self.request.tokens[self.n_past : self.n_past + limit]

    def accept(self, token: int) -> bool:
        """Turn a sampled token into text for the client; True when the reply is over."""
        request = self.request
        if self._tokenizer.is_end(token):
            request.send(Chunk(self._stops.flush(), self._unsent, FinishReason.STOP))
            return True
        self._left -= 1
        self._unsent += 1
        text, stopped = self._stops.feed(self._decoder.decode(self._tokenizer.piece(token)))
        if stopped:
            request.send(Chunk(text, self._unsent, FinishReason.STOP))
            return True
        if text:
            request.send(Chunk(text, self._unsent))
            self._unsent = 0
        if self._left <= 0:
            # At the end a partial stop sequence is just text, but the bytes of a character
            # cut off by max_tokens are dropped: a reply should not end in U+FFFD.
            request.send(Chunk(self._stops.flush(), self._unsent, FinishReason.LENGTH))
            return True
        self.next_token = token
        return False
