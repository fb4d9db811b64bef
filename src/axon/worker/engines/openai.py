"""The ``openai`` engine: streams replies from any OpenAI-compatible server (vLLM, TGI,
SGLang, llama.cpp's server) over plain httpx, so the worker needs no ``openai`` package.

Continuing a reply (``prefix``) sends the reply so far as a final assistant message with
``continue_final_message: true, add_generation_prompt: false``. vLLM honours these; TGI and
llama.cpp's own server continue a final assistant message by themselves. A server that does
neither (llama-cpp-python's) starts a fresh answer after it instead, so a resumed reply may
repeat itself or change course there.

Errors that can reach a client name no address and quote nothing the server said: an
upstream's URL, host names and error bodies are the operator's business, so they go to
the worker's log (at warning level) and the client gets a generic message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import httpx

from axon.config import EngineSettings
from axon.core.errors import ConfigError, ContextWindowExceeded, EngineError, InvalidRequest
from axon.core.types import ChatMessage, FinishReason, SamplingParams
from axon.models.base import Tokenizer
from axon.models.estimate import EstimateTokenizer
from axon.models.gguf import GgufTokenizer
from axon.observability import metrics
from axon.worker.engines.base import Chunk, Engine

log = logging.getLogger(__name__)

#: The first retry waits this long, each next one twice as long: enough for a server's
#: brief hiccup, short next to the queue's own redelivery.
RETRY_BACKOFF_S = 0.25
#: A server's ``Retry-After`` is honoured up to this long; a longer wait is the queue's job.
MAX_RETRY_AFTER_S = 5.0
#: Error text from a server, cut to this length in logs (it may quote the request back).
MAX_ERROR_CHARS = 300
#: How servers say "the prompt does not fit": OpenAI and llama-cpp-python (the code), vLLM
#: and SGLang ("maximum context length"), llama.cpp ("exceed_context_size_error"), TGI.
_CONTEXT_EXCEEDED = re.compile(
    r"context[ _](length|window|size)|exceed_context|max_new_tokens` must be <=|"
    r"must have less than \d+ tokens",
    re.IGNORECASE,
)
_FIX_URL = "set AXON_ENGINE__OPENAI__BASE_URL to the server's API root (usually ending in /v1)"
_FIX_KEY = "set AXON_ENGINE__OPENAI__API_KEY to a key that server accepts"


class _Retryable(Exception):
    """A failure that another attempt may not meet, as long as nothing was streamed yet.

    ``reason`` may reach a client, so it names no address and quotes nothing the server
    said; ``detail`` (what the server said) is for the log only.
    """

    def __init__(self, reason: str, delay_s: float = 0.0, *, detail: str = "") -> None:
        super().__init__(reason)
        self.delay_s = delay_s
        self.detail = detail


class OpenAIEngine(Engine):
    """A model served by a remote OpenAI-compatible server, reached through ``client``
    (an ``httpx.AsyncClient`` whose ``base_url`` is the API root, e.g. ``.../v1``)."""

    def __init__(
        self,
        model: str,
        client: httpx.AsyncClient,
        *,
        tokenizer: Tokenizer,
        remote_model: str | None = None,
        context_window: int = 8192,
        default_max_tokens: int = 512,
        max_retries: int = 2,
        retry_backoff_s: float = RETRY_BACKOFF_S,
    ) -> None:
        self.model = model
        self.remote_model = remote_model or model
        self.context_window = context_window
        self.default_max_tokens = default_max_tokens
        self.max_retries = max(0, max_retries)
        self.retry_backoff_s = retry_backoff_s
        #: The API root without credentials: for logs and operator-facing errors only.
        self.base_url = _without_credentials(client.base_url)
        self._client = client
        self._tokenizer = tokenizer
        self._started = False
        self._reachable = True
        self._running = 0

    @classmethod
    def from_settings(cls, e: EngineSettings) -> OpenAIEngine:
        o = e.openai
        if not o.base_url:
            raise ConfigError(f"The openai engine needs its server's address: {_FIX_URL}.")
        headers = {"Authorization": f"Bearer {o.api_key.get_secret_value()}"} if o.api_key else {}
        client = httpx.AsyncClient(
            base_url=o.base_url,
            headers=headers,
            # Write and pool waits get the read timeout: a busy server reads late, and
            # more requests than pool_size wait for a connection rather than fail.
            timeout=httpx.Timeout(o.read_timeout_s, connect=o.connect_timeout_s),
            limits=httpx.Limits(max_connections=o.pool_size, max_keepalive_connections=o.pool_size),
        )
        # Without the model's GGUF, three bytes a token errs towards refusing a prompt early
        # rather than failing remotely.
        tokenizer: Tokenizer = (
            GgufTokenizer(e.model_path) if e.model_path else EstimateTokenizer(bytes_per_token=3)
        )
        return cls(
            e.model,
            client,
            tokenizer=tokenizer,
            remote_model=o.remote_model,
            context_window=e.context_window,
            default_max_tokens=e.default_max_tokens,
            max_retries=o.max_retries,
        )

    @property
    def tokenizer(self) -> Tokenizer:
        return self._tokenizer

    @property
    def ready(self) -> bool:
        return self._started and self._reachable

    @property
    def running(self) -> int:
        """Requests in flight to the server (its own queue is not visible from here)."""
        return self._running

    async def start(self) -> None:
        # These errors stop the worker at startup and reach only its operator, who needs
        # the address; ``generate``'s errors may reach a client and name none.
        try:
            response = await self._client.get("models")
        except httpx.TransportError as exc:
            raise ConfigError(
                f"The model server at {self.base_url} is not reachable ({_describe(exc)}): "
                f"start it, or {_FIX_URL}."
            ) from exc
        if response.status_code in (401, 403):
            raise ConfigError(f"The model server at {self.base_url} refused the key: {_FIX_KEY}.")
        if response.status_code != 200:
            raise ConfigError(
                f"The model server at {self.base_url} answered GET /models with HTTP "
                f"{response.status_code}, so it is not an OpenAI-compatible API root: {_FIX_URL}."
            )
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            served = [m.get("id") for m in response.json().get("data", [])]
            if served and self.remote_model not in served:
                # Not fatal: some servers (llama-cpp-python) answer under any model name.
                log.warning(
                    "the model server does not list the model; set AXON_ENGINE__OPENAI__"
                    "REMOTE_MODEL if it refuses requests",
                    extra={"model": self.remote_model, "served": served[:10]},
                )
        self._started = self._reachable = True

    async def close(self) -> None:
        self._started = False
        await self._client.aclose()

    async def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        max_tokens = params.max_tokens or self.default_max_tokens
        if prefix:
            # The prefix was already part of the reply: it counts against max_tokens.
            max_tokens -= self._count_text(prefix)
            if max_tokens < 1:
                yield Chunk("", 0, FinishReason.LENGTH)
                return
        body = _request_body(self.remote_model, messages, params, prefix, max_tokens)
        self._running += 1
        try:
            for attempt in range(self.max_retries + 1):
                reply = _Reply()
                try:
                    async with self._client.stream("POST", "chat/completions", json=body) as resp:
                        await self._check(resp)
                        async for line in resp.aiter_lines():
                            for chunk in reply.feed(line):
                                yield chunk
                            if reply.done:  # leaving closes the response, and its iterator
                                break
                        if not (reply.done or reply.finish):
                            raise _Retryable("the stream ended before the reply was finished")
                    prompt_tokens = reply.prompt_tokens
                    if prompt_tokens is None:  # the server sent no usage: count it here
                        prompt_tokens = self._tokenizer.count_prompt(messages)
                    elif (cached := reply.cached_tokens) is not None:
                        # The server's own prefix cache, when it reports one (OpenAI; vLLM
                        # with --enable-prompt-tokens-details). Its steps, batches and KV
                        # use are its own metrics' business.
                        metrics.PREFIX_CACHE_QUERIES.labels(self.model).inc(prompt_tokens)
                        metrics.PREFIX_CACHE_HITS.labels(self.model).inc(cached)
                    yield reply.last(prompt_tokens)
                    return
                except (_Retryable, httpx.TransportError) as exc:
                    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                        self._reachable = False
                    if reply.started:
                        if reply.held is not None:  # sent by the server: the client keeps it
                            held, reply.held = reply.held, None
                            yield held
                        self._log_failure("the model server failed mid-reply", exc, attempt)
                        raise EngineError(
                            f"The upstream model server failed mid-reply: {_reason(exc)}."
                        ) from exc
                    if attempt == self.max_retries:
                        self._log_failure("the model server failed; giving up", exc, attempt)
                        raise EngineError(
                            f"The upstream model server failed {attempt + 1} times before the "
                            f"first token; the last time: {_reason(exc)}."
                        ) from exc
                    delay = self.retry_backoff_s * 2**attempt
                    if isinstance(exc, _Retryable):
                        delay = max(delay, exc.delay_s)
                    self._log_failure(
                        "the model server failed before the first token; retrying", exc, attempt
                    )
                    await asyncio.sleep(delay)
        finally:
            self._running -= 1

    def _log_failure(self, what: str, exc: BaseException, attempt: int) -> None:
        log.warning(
            what,
            extra={"url": self.base_url, "attempt": attempt + 1, "reason": _describe(exc)},
        )

    async def _check(self, response: httpx.Response) -> None:
        """Raise for an error status: retryable ones as ``_Retryable``, the rest mapped.

        What the server said is logged here, never put in the error: it may name hosts,
        paths or the server's internals.
        """
        self._reachable = True
        status = response.status_code
        if status == 200:
            return
        await response.aread()
        try:
            message = _message_of(response.json())
        except ValueError:
            message = response.text[:MAX_ERROR_CHARS]
        if status in (408, 429) or status >= 500:
            raise _Retryable(
                f"the upstream model server failed (HTTP {status})",
                _retry_after(response),
                detail=f"HTTP {status}: {message}",
            )
        log.warning(
            "the model server refused a request",
            extra={"url": self.base_url, "status": status, "detail": message},
        )
        if _CONTEXT_EXCEEDED.search(message):
            raise ContextWindowExceeded(_CONTEXT_MESSAGE, param="messages")
        if status in (401, 403):
            raise ConfigError(
                f"The upstream model server refused the API key (HTTP {status}): {_FIX_KEY}."
            )
        if status == 404:
            raise ConfigError(
                f"The upstream model server answered HTTP 404: {_FIX_URL}, and "
                "AXON_ENGINE__OPENAI__REMOTE_MODEL to a model it serves."
            )
        raise InvalidRequest(f"The upstream model server refused the request (HTTP {status}).")

    def _count_text(self, text: str) -> int:
        """Tokens of ``text`` as assistant content: the template's share cancels out."""
        count = self._tokenizer.count_message
        return max(0, count(ChatMessage(role="assistant", content=text)) - count(_EMPTY_REPLY))


_EMPTY_REPLY = ChatMessage(role="assistant", content="")
_CONTEXT_MESSAGE = "The prompt and the reply do not fit in the upstream model's context window."


class _Reply:
    """One response's SSE lines turned into chunks.

    Every text delta counts one token. After the first delta (which goes out at once: time
    to first token is what users feel) the newest delta is held back until the next one
    arrives, so that the last chunk with text can also carry the finish reason and the
    difference to the server's own ``completion_tokens``: a delta may hold several tokens
    (a character split across tokens, a server that batches its stream), and the
    end-of-turn token has no text. The worker batches tokens anyway, so the hold is unseen.
    """

    def __init__(self) -> None:
        self.started = False
        self.done = False
        self.deltas = 0
        self.held: Chunk | None = None
        self.finish: FinishReason | None = None
        self.usage: dict[str, Any] = {}

    @property
    def prompt_tokens(self) -> int | None:
        value = self.usage.get("prompt_tokens")
        return value if isinstance(value, int) else None

    @property
    def cached_tokens(self) -> int | None:
        """Prompt tokens the server found in its prefix cache, if it says."""
        details = self.usage.get("prompt_tokens_details")
        value = details.get("cached_tokens") if isinstance(details, dict) else None
        return value if isinstance(value, int) and value >= 0 else None

    def feed(self, line: str) -> list[Chunk]:
        # Anything but data (": ping" comments, blank separators, event names) carries nothing.
        if not line.startswith("data:"):
            return []
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return []
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            raise EngineError("The model server sent an event that is not JSON.") from None
        if not isinstance(event, dict):
            raise EngineError("The model server sent an event that is not a JSON object.")
        if "error" in event:
            message = _message_of(event)
            if _CONTEXT_EXCEEDED.search(message):
                log.warning("the model server sent an error event", extra={"detail": message})
                raise ContextWindowExceeded(_CONTEXT_MESSAGE, param="messages")
            raise _Retryable(
                "the upstream model server reported an error", detail=f"error event: {message}"
            )
        if isinstance(event.get("usage"), dict):
            self.usage = event["usage"]
        out: list[Chunk] = []
        for choice in event.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content") if isinstance(delta, dict) else None
            if isinstance(text, str) and text:
                self.deltas += 1
                chunk = Chunk(text)
                if not self.started:
                    self.started = True
                    out.append(chunk)
                else:
                    if self.held is not None:
                        out.append(self.held)
                    self.held = chunk
            if reason := choice.get("finish_reason"):
                self.finish = _finish_reason(str(reason))
        return out

    def last(self, prompt_tokens: int) -> Chunk:
        """The final chunk: the held text, the finish reason and the token counts."""
        text, tokens = (self.held.text, self.held.tokens) if self.held else ("", 0)
        completion = self.usage.get("completion_tokens")
        if isinstance(completion, int):
            # Never negative: a server that counts fewer tokens than it sent deltas is wrong.
            tokens = max(0, tokens + completion - self.deltas)
        return Chunk(text, tokens, self.finish or FinishReason.STOP, prompt_tokens)


def _request_body(
    model: str,
    messages: Sequence[ChatMessage],
    params: SamplingParams,
    prefix: str,
    max_tokens: int,
) -> dict[str, Any]:
    wire = [{"role": m.role, "content": m.content} for m in messages]
    body: dict[str, Any] = {
        "model": model,
        "messages": wire,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    if prefix:
        wire.append({"role": "assistant", "content": prefix})
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    return body


def _finish_reason(reason: str) -> FinishReason:
    if reason == "length":
        return FinishReason.LENGTH
    if reason in ("abort", "error"):
        raise _Retryable(f"the upstream model server ended the reply early ({reason})")
    # "stop", and the other names servers use for it: "eos_token", "stop_sequence", ...
    return FinishReason.STOP


def _message_of(body: Any) -> str:
    """The message of an OpenAI (``{"error": {...}}``), vLLM (``{"message"}``), TGI
    (``{"error": "..."}``) or FastAPI (``{"detail"}``) error body."""
    found: object = body
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            found = error.get("message") or error.get("code") or error
        else:
            found = error or body.get("message") or body.get("detail") or body
    if isinstance(found, list):  # FastAPI validation errors: where and what, never the input
        found = "; ".join(
            f"{'.'.join(map(str, d.get('loc', ())))}: {d.get('msg')}"
            for d in found
            if isinstance(d, dict)
        )
    return str(found)[:MAX_ERROR_CHARS]


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", 0)), MAX_RETRY_AFTER_S)
    except ValueError:  # an HTTP date: rare from model servers, so just back off
        return 0.0


def _reason(exc: BaseException) -> str:
    """Why a request failed, in words a client may see: no address, no server text."""
    if isinstance(exc, _Retryable):
        return str(exc)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "the upstream model server could not be reached"
    if isinstance(exc, httpx.TimeoutException):
        return "the upstream model server timed out"
    return f"the connection to the upstream model server failed ({type(exc).__name__})"


def _describe(exc: BaseException) -> str:
    """Why a request failed, in detail, for the log."""
    if isinstance(exc, _Retryable):
        return f"{exc}: {exc.detail}" if exc.detail else str(exc)
    # httpx messages name the failure ("Connection refused"), never the request body.
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _without_credentials(url: httpx.URL) -> str:
    """``url`` without user info or query (where API keys hide), for logs."""
    return str(url.copy_with(userinfo=b"", query=None)).rstrip("/")
