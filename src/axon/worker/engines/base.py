"""The engine interface: an async generator of text pieces for one request."""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from axon.core.errors import ContextWindowExceeded
from axon.core.types import ChatMessage, FinishReason, SamplingParams
from axon.models.base import Tokenizer


@dataclass(slots=True)
class Chunk:
    """A piece of generated text.

    ``finish_reason`` is set on the last chunk only; that chunk may have empty text.
    ``prompt_tokens`` is set on the first chunk (or the last) when the engine knows it.
    """

    text: str
    tokens: int = 1
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None


class Engine(abc.ABC):
    """One model on one inference backend.

    Implementations accept many concurrent ``generate`` calls. Closing the returned
    iterator early (``aclose``) cancels the generation: the engine must stop spending
    decode steps on it promptly.
    """

    #: The model name this engine serves (as listed by ``/v1/models``).
    model: str
    #: Prompt plus completion tokens one sequence can hold.
    context_window: int

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model. Raise ``ConfigError`` naming the fix when it cannot be loaded."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release the model and its threads."""

    @property
    def ready(self) -> bool:
        return True

    @property
    def running(self) -> int:
        """Sequences the engine is decoding now."""
        return 0

    @property
    def waiting(self) -> int:
        """Sequences accepted but not yet decoding (queued inside the engine)."""
        return 0

    @property
    @abc.abstractmethod
    def tokenizer(self) -> Tokenizer:
        """Counts prompt tokens exactly as this engine will (shared with the session
        manager when both run in one process)."""

    @abc.abstractmethod
    def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        *,
        prefix: str = "",
    ) -> AsyncGenerator[Chunk, None]:
        """Stream the assistant's reply to ``messages``.

        ``prefix`` is assistant text already produced (by a worker that died mid-reply):
        the engine continues after it, and yields only the new text.
        """


def reply_budget(*, prompt: int, total: int, max_tokens: int, context_window: int) -> int:
    """Tokens a reply may still take. ``prompt`` is the rendered prompt's length and
    ``total`` that plus any prefix already generated (which counts against
    ``max_tokens``). Raise ``ContextWindowExceeded`` when the prompt alone fills the
    window; 0 means the reply is already as long as it may be."""
    if prompt >= context_window:
        raise ContextWindowExceeded(
            f"The prompt takes {prompt} tokens; the context window is "
            f"{context_window} tokens, including the reply.",
            param="messages",
        )
    return max(0, min(max_tokens - (total - prompt), context_window - total))
