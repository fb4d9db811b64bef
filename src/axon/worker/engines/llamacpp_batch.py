"""Continuous batching over llama.cpp: one thread, one context, many sequences per step.

Each step decodes one token for every sequence that is generating plus a chunk of the
prompts still being read (chunked prefill), so a long prompt never stalls running
streams. Requests join and leave between steps. Every sequence owns a slot: a llama.cpp
sequence id with its own KV cells (``context_window`` of them). A finished sequence's
cells stay in its slot until the slot is needed, so the next turn of the same
conversation, whose prompt starts with this turn's prompt and reply, reads only its new
tokens (prefix reuse). Each forward pass records its time and batch size, and each
admission the prompt tokens it looked up in its slot and found there.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from axon.core.errors import ConfigError, EngineError
from axon.models.gguf import GgufTokenizer, check_model_file, import_llama_cpp
from axon.observability import metrics
from axon.worker.engines.llamacpp_sequence import Outbox, Request, Running, Sampler

log = logging.getLogger(__name__)

#: What one step feeds one sequence: its tokens, whether to sample after the last one,
#: and whether they are prompt tokens (for the counters).
_Entry = tuple[Running, list[int], bool, bool]


@dataclass(slots=True)
class DecoderStats:
    """Counters of the decode loop (read by tests and benchmarks; never reset)."""

    #: Batches decoded.
    steps: int = 0
    #: Batches that carried prompt tokens while other sequences were generating.
    mixed_steps: int = 0
    #: Prompt tokens run through the model.
    prefilled_tokens: int = 0
    #: Prompt tokens found already in a slot's KV cells, and so not run again.
    reused_tokens: int = 0
    #: Requests that got a slot.
    admitted: int = 0


@dataclass(slots=True)
class _Slot:
    """A llama.cpp sequence id and what its KV cells hold, position by position."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    #: When it was last released (a logical clock), for least-recently-used eviction.
    used_at: int = 0
    busy: bool = False


def common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case for a continued conversation: one C-level compare
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class BatchDecoder:
    """Owns the llama.cpp model and context and the thread that decodes with them.

    The event loop only calls ``submit`` and ``cancel`` (both quick); everything else
    about a request travels back through its ``Request``.
    """

    def __init__(
        self,
        model_path: Path,
        tokenizer: GgufTokenizer,
        *,
        model: str,
        capacity: int,
        context_window: int,
        threads: int,
        prefill_chunk: int,
        prefix_reuse: bool,
    ) -> None:
        if capacity < 1 or prefill_chunk < 1:
            raise ConfigError(
                "The llamacpp engine needs a capacity and prefill chunk of 1 or more."
            )
        self.model_path = model_path
        self.tokenizer = tokenizer
        self.capacity = capacity
        self.context_window = context_window
        self.threads = threads
        self.prefill_chunk = prefill_chunk
        self.prefix_reuse = prefix_reuse
        self.stats = DecoderStats()
        self._cond = threading.Condition()
        self._waiting: deque[Request] = deque()
        self._active: list[Running] = []
        self._slots = [_Slot(i) for i in range(capacity)]
        self._clock = 0
        self._outbox = Outbox()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._llama_cpp: Any = None
        self._model: Any = None
        self._ctx: Any = None
        self._mem: Any = None
        self._batch: Any = None
        # Bound once: a step records with no label lookup.
        self._step_seconds = metrics.ENGINE_STEP.labels(model)
        self._batch_size = metrics.ENGINE_BATCH.labels(model)
        self._kv_usage = metrics.ENGINE_KV_USAGE.labels(model)
        self._prefix_queries = metrics.PREFIX_CACHE_QUERIES.labels(model)
        self._prefix_hits = metrics.PREFIX_CACHE_HITS.labels(model)

    @property
    def running(self) -> int:
        return len(self._active)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # Lifecycle: called from the event loop through a worker thread.

    def load(self) -> None:
        """Load the weights and create the context; ``ConfigError`` when that fails."""
        check_model_file(self.model_path)
        llama_cpp = self._llama_cpp = import_llama_cpp()
        llama_cpp.llama_backend_init()
        model = llama_cpp.llama_model_load_from_file(
            str(self.model_path).encode("utf-8"), llama_cpp.llama_model_default_params()
        )
        if not model:
            raise ConfigError(
                f"Model file {self.model_path} could not be loaded: set "
                "AXON_ENGINE__MODEL_PATH to a GGUF file."
            )
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = self.capacity * self.context_window
        params.n_seq_max = self.capacity
        # One KV stream per sequence: a long reply cannot crowd the others out of a shared
        # cache, and attention reads only the sequence's own cells.
        params.kv_unified = False
        params.n_batch = params.n_ubatch = self.prefill_chunk + self.capacity
        params.n_threads = params.n_threads_batch = self.threads
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx or llama_cpp.llama_n_ctx_seq(ctx) < self.context_window:
            if ctx:
                llama_cpp.llama_free(ctx)
            llama_cpp.llama_model_free(model)
            raise ConfigError(
                f"llama.cpp could not make room for {self.capacity} sequences of "
                f"{self.context_window} tokens: lower AXON_ENGINE__CAPACITY or "
                "AXON_ENGINE__CONTEXT_WINDOW."
            )
        self._model, self._ctx = model, ctx
        self._mem = llama_cpp.llama_get_memory(ctx)
        self._batch = llama_cpp.llama_batch_init(self.prefill_chunk + self.capacity, 0, 1)

    def start(self) -> None:
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="llamacpp-decode", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Fail what is running or waiting, stop the thread and free llama.cpp's memory."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        llama_cpp = self._llama_cpp
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx = self._mem = None
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    # Event-loop side.

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._closing or self._thread is None:
                raise EngineError("The llamacpp engine is closed.")
            request.outbox = self._outbox
            self._waiting.append(request)
            self._cond.notify()

    def cancel(self, request: Request) -> None:
        """Take ``request`` out: at once if it is still waiting, else at the next step."""
        request.cancelled = True
        with self._cond:
            try:
                self._waiting.remove(request)
            except ValueError:
                self._cond.notify()  # the thread may be idle, waiting for work
                return
        request.released.set()  # never reached the thread: called on the loop itself

    # The decode thread.

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._closing or self._active or self._waiting):
                    self._cond.wait()
                if self._closing:
                    break
                free = self.capacity - len(self._active)
                joining = [self._waiting.popleft() for _ in range(min(free, len(self._waiting)))]
            for request in joining:
                self._admit(request)
            for seq in [s for s in self._active if s.request.cancelled]:
                self._finish(seq)
            if self._active:
                try:
                    self._step()
                except Exception:
                    # A bug here must not kill the thread that every request depends on.
                    log.exception("llama.cpp decode step failed")
                    for seq in list(self._active):
                        self._finish(seq, EngineError("llama.cpp failed while generating."))
            self._record_kv_use()
            self._outbox.flush()
        self._shut_down()
        self._record_kv_use()
        self._outbox.flush()

    def _record_kv_use(self) -> None:
        """Set the KV-use gauge: the cells running sequences hold, out of every slot's. The
        cells a finished sequence leaves for prefix reuse are not counted: the slot's next
        user drops whatever it does not share, so they never keep a request waiting."""
        used = sum(len(slot.cached) for slot in self._slots if slot.busy)
        self._kv_usage.set(used / (self.capacity * self.context_window))

    def _shut_down(self) -> None:
        error = EngineError("The llamacpp engine closed during the generation.")
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for request in waiting:
            request.send(error)
            request.release()
        for seq in list(self._active):
            self._finish(seq, error)

    def _admit(self, request: Request) -> None:
        if request.cancelled:
            request.release()
            return
        slot = self._pick_slot(request.tokens)
        try:
            # At least the last prompt token must be decoded again: its logits are not kept.
            keep = min(common_prefix(slot.cached, request.tokens), len(request.tokens) - 1)
            keep = self._truncate(slot, keep if self.prefix_reuse else 0)
            sampler = Sampler(self._llama_cpp, request.params, request.seed)
        except Exception:
            log.exception("could not start a llama.cpp sequence")
            self._truncate(slot, 0)
            request.send(EngineError("llama.cpp could not start the generation."))
            request.release()
            return
        slot.busy = True
        self._active.append(Running(request, slot.seq_id, keep, sampler, self.tokenizer))
        self.stats.admitted += 1
        self.stats.reused_tokens += keep
        if self.prefix_reuse:
            self._prefix_queries.inc(len(request.tokens))
            self._prefix_hits.inc(keep)

    def _pick_slot(self, tokens: list[int]) -> _Slot:
        free = [s for s in self._slots if not s.busy]
        if self.prefix_reuse:
            shared, best = max(
                ((common_prefix(s.cached, tokens), s) for s in free),
                key=lambda pair: (pair[0], -pair[1].used_at),
            )
            # A prompt that continues what the slot holds loses nothing by taking it.
            if shared and shared * 2 >= len(best.cached):
                return best
        # Otherwise a slot next to busy ones: llama.cpp runs a batch over per-sequence KV
        # streams as one forward pass per run of consecutive sequence ids, so a slot that
        # fills a gap saves a pass and a lone one costs one. Then evict the cache least
        # likely to be asked for: none, else the oldest.
        busy = {s.seq_id for s in self._slots if s.busy}
        return min(
            free,
            key=lambda s: (
                -((s.seq_id - 1 in busy) + (s.seq_id + 1 in busy)),
                bool(s.cached),
                s.used_at,
            ),
        )

    def _truncate(self, slot: _Slot, keep: int) -> int:
        """Drop the slot's cells from position ``keep`` on; return how many remain."""
        if keep < len(slot.cached):
            mem, llama_cpp = self._mem, self._llama_cpp
            if not llama_cpp.llama_memory_seq_rm(mem, slot.seq_id, keep, -1):
                # Some caches (recurrent models) cannot cut a sequence in the middle.
                llama_cpp.llama_memory_seq_rm(mem, slot.seq_id, -1, -1)
                keep = 0
            del slot.cached[keep:]
        return keep

    def _finish(self, seq: Running, error: EngineError | None = None) -> None:
        """Take ``seq`` out of the batch; its slot keeps the cells for prefix reuse."""
        self._active.remove(seq)
        seq.sampler.close()
        slot = self._slots[seq.slot]
        slot.busy = False
        self._clock += 1
        slot.used_at = self._clock
        if error is not None:
            # Whatever state the failure left behind, the next user starts from nothing.
            self._llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            slot.cached.clear()
        elif not self.prefix_reuse:
            self._truncate(slot, 0)
        if error is not None:
            seq.request.send(error)
        seq.request.release()

    def _step(self) -> None:
        entries: list[_Entry] = [
            (s, [s.next_token], True, False) for s in self._active if not s.prefilling
        ]
        decoding = len(entries)
        room = self.prefill_chunk
        for seq in self._active:  # in order of arrival: the oldest prompt goes first
            if room <= 0:
                break
            if seq.prefilling:
                chunk = seq.pending(room)
                room -= len(chunk)
                done = seq.n_past + len(chunk) == len(seq.request.tokens)
                entries.append((seq, chunk, done, True))
        self.stats.steps += 1
        if decoding and room < self.prefill_chunk:
            self.stats.mixed_steps += 1
        # In sequence-id order: llama.cpp only groups increasing, consecutive ids into one
        # forward pass; arrival order would split the batch into one pass per sequence.
        entries.sort(key=lambda entry: entry[0].slot)
        self._run_batch(entries)

    def _run_batch(self, entries: list[_Entry]) -> None:
        try:
            self._decode(entries)
        except Exception as exc:
            # A failed decode may leave some of the batch's cells behind: drop them.
            for seq, *_ in entries:
                self._llama_cpp.llama_memory_seq_rm(self._mem, seq.slot, seq.n_past, -1)
            if len(entries) > 1:
                # Decode each sequence alone, so that only the one at fault fails.
                for entry in entries:
                    self._run_batch([entry])
                return
            log.error("llama.cpp failed on a sequence: %s", exc)
            self._finish(entries[0][0], EngineError("llama.cpp failed while generating."))
            return
        index = -1
        for seq, tokens, output, prompt in entries:
            index += len(tokens)
            self._slots[seq.slot].cached.extend(tokens)
            seq.n_past += len(tokens)
            if prompt:
                self.stats.prefilled_tokens += len(tokens)
            if not output:
                continue
            try:
                finished = seq.accept(seq.sampler.sample(self._ctx, index))
            except Exception:
                log.exception("llama.cpp sampling failed")
                self._finish(seq, EngineError("llama.cpp failed while sampling."))
                continue
            if finished:
                self._finish(seq)

    def _decode(self, entries: list[_Entry]) -> None:
        """Run one batch through the model; raise when llama.cpp refuses it."""
        batch = self._batch
        i = 0
        for seq, tokens, output, _ in entries:
            pos, seq_id = seq.n_past, seq.slot
            for token in tokens:
                batch.token[i] = token
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq_id
                batch.logits[i] = 0
                i += 1
                pos += 1
            batch.logits[i - 1] = output
        batch.n_tokens = i
        started = time.perf_counter()
        code = self._llama_cpp.llama_decode(self._ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code}")
        # Once per forward pass, whatever the batch holds: never per token or sequence.
        self._step_seconds.observe(time.perf_counter() - started)
        self._batch_size.observe(len(entries))
