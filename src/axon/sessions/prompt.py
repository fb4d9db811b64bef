"""Build the prompt of a turn from the stored history so that it fits the context window:
keep the system prompt and the new message, then as many of the newest turns as fit."""

from __future__ import annotations

from collections.abc import Sequence

from axon.core.errors import ContextWindowExceeded
from axon.core.types import ChatMessage
from axon.models.base import ModelInfo


def reply_budget(info: ModelInfo, max_tokens: int | None, default_max_tokens: int) -> int:
    """Tokens to keep free for the reply. Raise when ``max_tokens`` leaves no room."""
    if max_tokens is not None and max_tokens >= info.context_window:
        raise ContextWindowExceeded(
            f"max_tokens is {max_tokens}, but the model {info.name!r} has a context window "
            f"of {info.context_window} tokens for prompt and reply together",
            param="max_tokens",
        )
    if max_tokens is not None:
        return max_tokens
    # Without an explicit limit, keep a reasonable reply possible without refusing prompts
    # that leave less than the default; the engine stops at the window's end anyway.
    return min(default_max_tokens, info.context_window // 4)


def fit_prompt(
    info: ModelInfo,
    *,
    system: str | None,
    history: Sequence[ChatMessage],
    new: Sequence[ChatMessage],
    reserve: int,
) -> list[ChatMessage]:
    """Return ``[system] + newest history that fits + new``.

    ``new`` must fit (with the system prompt) in ``context_window - reserve``, else
    ``ContextWindowExceeded``. History is dropped oldest first, a whole message at a time,
    and never starts with an assistant message (a reply without its question misleads).
    """
    budget = info.context_window - reserve
    head = [ChatMessage(role="system", content=system)] if system else []
    required = head + list(new)
    used = info.tokenizer.count_prompt(required)
    if used > budget:
        raise ContextWindowExceeded(
            f"the message is {used} tokens with the system prompt, but the model "
            f"{info.name!r} has room for {budget} prompt tokens "
            f"({info.context_window} in its context window, {reserve} kept for the reply)",
            param="messages",
        )
    kept: list[ChatMessage] = []
    for message in reversed(history):
        cost = info.tokenizer.count_message(message)
        if used + cost > budget:
            break
        used += cost
        kept.append(message)
    kept.reverse()
    while kept and kept[0].role == "assistant":
        kept.pop(0)
    prompt = head + kept + list(new)
    # The per-message costs are exact for ChatML, but check the real total once and
    # drop further turns if a template joins messages differently.
    while kept and info.tokenizer.count_prompt(prompt) > budget:
        kept.pop(0)
        while kept and kept[0].role == "assistant":
            kept.pop(0)
        prompt = head + kept + list(new)
    return prompt
