"""The `vllm` engine: vLLM's async engine in-process, on GPUs or vLLM's CPU build.

vLLM batches every running request itself (continuous batching over a paged KV cache),
so this adapter only renders prompts, maps sampling parameters, and turns vLLM's outputs
into chunks. It hands vLLM token ids, never text, tokenized so that only the chat
template produces control tokens (``axon.models.hf``). vLLM, torch and transformers are
imported lazily: they live in their own environment (``scripts/setup-vllm.sh``), since
vLLM pins many packages Axon also uses.

vLLM starts its engine core in a child process with ``spawn``: the process creating the
engine must not re-run its work when that child imports the main module. ``python -m
axon worker`` is safe (``multiprocessing`` never re-imports a package's ``__main__``);
a script of one's own needs an ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from pathlib import Path
from typing import Any

from axon.config import EngineSettings
from axon.core.errors import ConfigError, EngineError, InvalidRequest
from axon.core.types import ChatMessage, FinishReason, SamplingParams
from axon.models.hf import HfChatTokenizer
from axon.observability import metrics
from axon.worker.engines.base import Chunk, Engine, reply_budget

log = logging.getLogger(__name__)

_FIX = (
    "run `bash scripts/setup-vllm.sh` and start the worker with "
    "`.venv-vllm/bin/python -m axon worker`"
)
_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


def import_vllm() -> Any:
    """Import ``vllm`` lazily, with a message naming the fix when it is missing."""
    # vLLM reads these once, at import. Its own plain-text log handler would break the
    # worker's one-JSON-object-per-line logs; and a serving platform must not report
    # usage to a third party unasked. Both can still be overridden from the environment.
    os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    try:
        return importlib.import_module("vllm")
    except ImportError as exc:
        raise ConfigError(f"The vllm engine needs vLLM, which is not installed: {_FIX}.") from exc


def _load_hf_tokenizer(model_dir: Path) -> Any:
    """The model folder's tokenizer, loaded the way vLLM loads it for the engine."""
    import_vllm()
    try:
        tokenizers = importlib.import_module("vllm.tokenizers")
        return tokenizers.get_tokenizer(str(model_dir))
    except ImportError:  # vLLM before 0.12 kept it elsewhere; transformers loads the same
        transformers = importlib.import_module("transformers")
        return transformers.AutoTokenizer.from_pretrained(str(model_dir))


class VllmEngine(Engine):
    """Serves one Hugging Face model folder with vLLM's ``AsyncLLM``."""

    def __init__(
        self,
        model_name: str,
        model_dir: Path | str,
        *,
        context_window: int,
        default_max_tokens: int,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.9,
        dtype: str = "auto",
        max_num_seqs: int | None = None,
        kv_cache_gib: float | None = None,
    ) -> None:
        self.model = model_name
        self.model_dir = Path(model_dir)
        self.context_window = context_window
        self.default_max_tokens = default_max_tokens
        self.tensor_parallel_size = tensor_parallel_size
        self.gpu_memory_utilization = gpu_memory_utilization
        self.dtype = dtype
        self.max_num_seqs = max_num_seqs
        self.kv_cache_gib = kv_cache_gib
        self._engine: Any = None
        self._tokenizer: HfChatTokenizer | None = None

    @classmethod
    def from_settings(cls, e: EngineSettings) -> VllmEngine:
        if e.vllm.model_dir is None:
            raise ConfigError(
                "The vllm engine needs a Hugging Face model folder: set "
                "AXON_ENGINE__VLLM__MODEL_DIR (`axon convert-model` writes one from the "
                "bundled GGUF)."
            )
        return cls(
            e.model,
            e.vllm.model_dir,
            context_window=e.context_window,
            default_max_tokens=e.default_max_tokens,
            tensor_parallel_size=e.vllm.tensor_parallel_size,
            gpu_memory_utilization=e.vllm.gpu_memory_utilization,
            dtype=e.vllm.dtype,
            # The worker never runs more than `capacity` jobs, so vLLM needs no more
            # sequence slots than that (fewer slots, less memory held for them).
            max_num_seqs=e.capacity,
            kv_cache_gib=e.vllm.kv_cache_gib,
        )

    @property
    def tokenizer(self) -> HfChatTokenizer:
        """The model folder's tokenizer, loaded on first use (no weights needed)."""
        if self._tokenizer is None:
            self._check_model_dir()
            self._tokenizer = HfChatTokenizer(_load_hf_tokenizer(self.model_dir))
        return self._tokenizer

    @property
    def ready(self) -> bool:
        return self._engine is not None and not self._engine.errored

    @property
    def running(self) -> int:
        """Requests vLLM holds (decoding or queued inside it): its scheduler's split is
        not exposed through the engine client."""
        return int(self._engine.get_num_unfinished_requests()) if self._engine else 0

    def _check_model_dir(self) -> None:
        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(
                f"{self.model_dir} is not a Hugging Face model folder (no config.json): "
                "write one with `axon convert-model`, or set AXON_ENGINE__VLLM__MODEL_DIR."
            )

    async def start(self) -> None:
        if self._engine is not None:
            return
        vllm = import_vllm()
        self._check_model_dir()
        started = time.perf_counter()
        self._tokenizer = await asyncio.to_thread(lambda: self.tokenizer)
        args = vllm.AsyncEngineArgs(
            model=str(self.model_dir),
            served_model_name=self.model,
            max_model_len=self.context_window,
            tensor_parallel_size=self.tensor_parallel_size,
            gpu_memory_utilization=self.gpu_memory_utilization,
            dtype=self.dtype,
            max_num_seqs=self.max_num_seqs,
            kv_cache_memory_bytes=(
                int(self.kv_cache_gib * 2**30) if self.kv_cache_gib is not None else None
            ),
            # Axon has its own request logs and metrics.
            disable_log_stats=True,
            enable_log_requests=False,
        )
        try:
            # Building the engine blocks for as long as the model loads (a minute on a
            # CPU): a thread keeps the worker's event loop, and its broker heartbeats,
            # alive meanwhile. vLLM starts its output loop on the first request.
            self._engine = await asyncio.to_thread(vllm.AsyncLLMEngine.from_engine_args, args)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ConfigError(
                f"vLLM could not load {self.model_dir} ({exc}): check the folder and "
                "AXON_ENGINE__VLLM__GPU_MEMORY_UTILIZATION; on vLLM's CPU build that is the "
                "share of the memory node vLLM reserves, so prefer a fixed "
                "AXON_ENGINE__VLLM__KV_CACHE_GIB."
            ) from exc
        log.info(
            "model loaded",
            extra={
                "model": self.model,
                "model_dir": str(self.model_dir),
                "context_window": self.context_window,
                "vllm_version": vllm.__version__,
                "load_seconds": round(time.perf_counter() - started, 3),
            },
        )

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            # Stops the engine core process; requests still running fail with EngineError.
            await asyncio.to_thread(engine.shutdown)

    def _sampling_params(self, params: SamplingParams, budget: int) -> Any:
        vllm = import_vllm()
        output_kind = importlib.import_module("vllm.sampling_params").RequestOutputKind
        return vllm.SamplingParams(
            n=1,
            temperature=params.temperature,
            top_p=params.top_p,
            max_tokens=budget,
            stop=list(params.stop) or None,
            seed=params.seed,
            # Only the new text and tokens of each step: cumulative outputs would make a
            # long reply cost quadratic time in copying text.
            output_kind=output_kind.DELTA,
        )

    @staticmethod
    def _prompt(ids: list[int]) -> Any:
        """Already tokenized input: vLLM skips its own rendering and tokenization."""
        try:
            engine_inputs = importlib.import_module("vllm.inputs.engine")
            return engine_inputs.tokens_input(ids)
        except (ImportError, AttributeError):  # older releases take a TokensPrompt dict
            return {"prompt_token_ids": ids}

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        engine = self._engine
        if engine is None:
            raise EngineError("The vllm engine is not started.")
        # Rendering takes about a millisecond, and HF fast tokenizers must not be shared
        # between threads: it stays on the event loop.
        prompt, ids = self.tokenizer.encode(messages, prefix)
        budget = reply_budget(
            prompt=prompt,
            total=len(ids),
            max_tokens=params.max_tokens or self.default_max_tokens,
            context_window=self.context_window,
        )
        if budget <= 0:
            yield Chunk("", 0, FinishReason.LENGTH, prompt_tokens=prompt)
            return
        request_id = f"axon-{uuid.uuid4().hex}"
        outputs = engine.generate(
            self._prompt(ids), self._sampling_params(params, budget), request_id
        )
        finished = False
        first = True
        cache_counted = False
        # Tokens whose text vLLM still holds back (a possible stop sequence, a partial
        # UTF-8 character): counted on the next chunk that carries text.
        unsent = 0
        try:
            while (output := await _next(outputs)) is not None:
                if not cache_counted:
                    self._record_prefix_cache(len(ids), output)
                    cache_counted = True
                completion = output.outputs[0]
                unsent += len(completion.token_ids)
                reason = completion.finish_reason
                if reason is not None and reason not in _FINISH:
                    # "abort": vLLM dropped the request itself (shutting down).
                    raise EngineError(f"vLLM ended the request early ({reason}).")
                finish = _FINISH[reason] if reason is not None else None
                if output.finished and finish is None:
                    finish = FinishReason.STOP
                if completion.text or finish is not None:
                    yield Chunk(
                        completion.text,
                        unsent,
                        finish,
                        prompt_tokens=prompt if first else None,
                    )
                    first, unsent = False, 0
                if output.finished:
                    finished = True
                    return
        finally:
            if not finished:
                # Closed early (cancelled, client gone): free the sequence's KV cache
                # and stop spending decode steps on it.
                try:
                    await engine.abort(request_id)
                except Exception:  # must not hide why the generation ended
                    log.warning("vLLM could not abort a request", exc_info=True)
            await outputs.aclose()

    def _record_prefix_cache(self, looked_up: int, output: Any) -> None:
        """Count the prompt's tokens and those vLLM found in its prefix cache, once per
        request. vLLM's step time, batch size and KV use need its own statistics, which
        cost work on every token and stay off (``disable_log_stats``): not recorded."""
        cached = getattr(output, "num_cached_tokens", None)
        # Older releases do not report it: count nothing rather than a miss.
        if isinstance(cached, int) and cached >= 0:
            metrics.PREFIX_CACHE_QUERIES.labels(self.model).inc(looked_up)
            metrics.PREFIX_CACHE_HITS.labels(self.model).inc(cached)


async def _next(outputs: AsyncGenerator[Any, None]) -> Any | None:
    """vLLM's next output (``None`` at the end), its failures translated into Axon's
    error tree."""
    try:
        return await anext(outputs)
    except StopAsyncIteration:
        return None
    except Exception as exc:
        client_errors: tuple[type[Exception], ...] = (ValueError, TypeError)
        with contextlib.suppress(ImportError, AttributeError):
            client_errors += (importlib.import_module("vllm.exceptions").VLLMClientError,)
        if isinstance(exc, client_errors):
            # vLLM's request validation: the same request would fail again.
            raise InvalidRequest(f"vLLM rejected the request: {exc}") from exc
        log.error("vLLM failed while generating", exc_info=exc)
        raise EngineError(f"vLLM failed while generating: {type(exc).__name__}") from exc
