"""Build the prompt of a turn from the stored history so that it fits the context window:
keep the system prompt and the new message, then as many of the newest turns as fit."""

from __future__ import annotations

from collections.abc import Sequence

from axon.core.errors import ContextWindowExceeded
from axon.core.types import ChatMessage
from axon.models.base import ModelInfo


def reserve_for_reply(info: ModelInfo, max_tokens: int | None) -> int:
    """Tokens of the context window to keep free for the reply (and to reserve against the
    caller's token limits). Raise when ``max_tokens`` leaves no room."""
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
    return min(info.default_max_tokens, info.context_window // 4)


def fit_prompt(
    info: ModelInfo,
    *,
    system: str | None,
    history: Sequence[ChatMessage],
    new: Sequence[ChatMessage],
    reserve: int,
) -> list[ChatMessage]:
    """Return ``[system] + newest history that fits + new`` (see ``fit_and_count``)."""
    return fit_and_count(info, system=system, history=history, new=new, reserve=reserve)[0]


def fit_and_count(
    info: ModelInfo,
    *,
    system: str | None,
    history: Sequence[ChatMessage],
    new: Sequence[ChatMessage],
    reserve: int,
) -> tuple[list[ChatMessage], int]:
    """Return ``[system] + newest history that fits + new``, and its token count.

    ``new`` must fit (with the system prompt) in ``context_window - reserve``, else
    ``ContextWindowExceeded``. History is dropped oldest first, a whole message at a time,
    and never starts with an assistant message (a reply without its question misleads).

    Takes time linear in the messages and their text, however many there are (a request
    may carry thousands): each kept history message is counted once on its own, and only
    two prompts are rendered, the required part alone and the result, unless the
    template's per-message costs do not add up (see ``_drop_until_it_fits``).
    """
    tokenizer = info.tokenizer
    budget = info.context_window - reserve
    head = [ChatMessage(role="system", content=system)] if system else []
    tail = list(new)
    used = tokenizer.count_prompt(head + tail)
    if used > budget:
        raise ContextWindowExceeded(
            f"the message is {used} tokens with the system prompt, but the model "
            f"{info.name!r} has room for {budget} prompt tokens "
            f"({info.context_window} in its context window, {reserve} kept for the reply)",
            param="messages",
        )
    start = len(history)
    while start > 0:
        cost = tokenizer.count_message(history[start - 1])
        if used + cost > budget:
            break
        used += cost
        start -= 1
    start = _question_at_or_after(history, start)
    prompt = [*head, *history[start:], *tail]
    if start == len(history):
        return prompt, used  # no history: the required part, counted above
    # The per-message costs are exact for ChatML, but count the real total once (the
    # caller reserves it against rate limits) and drop further turns if a template joins
    # messages differently.
    used = tokenizer.count_prompt(prompt)
    if used > budget:
        start = _drop_until_it_fits(info, head, history, tail, start, budget)
        prompt = [*head, *history[start:], *tail]
        used = tokenizer.count_prompt(prompt)
    return prompt, used


def _question_at_or_after(history: Sequence[ChatMessage], start: int) -> int:
    """The first index from ``start`` on where the kept history may begin: not at an
    assistant message (``len(history)`` when there is none)."""
    while start < len(history) and history[start].role == "assistant":
        start += 1
    return start


def _drop_until_it_fits(
    info: ModelInfo,
    head: list[ChatMessage],
    history: Sequence[ChatMessage],
    tail: list[ChatMessage],
    too_long: int,
    budget: int,
) -> int:
    """The smallest start after ``too_long`` (whose prompt is over ``budget``) at which
    the prompt fits, by bisection over the real count: dropping turns one at a time and
    rendering each time would be quadratic. Each prompt rendered here is shorter than the
    one just over the budget, which the per-message costs had fitted into it: about
    log2(messages) renderings of about a context window each.

    Assumes a shorter history never makes a longer prompt, which holds for any template
    that renders each message once.
    """
    starts = [s for s in range(too_long + 1, len(history)) if history[s].role != "assistant"]
    starts.append(len(history))  # no history at all: known to fit
    lo, hi = 0, len(starts) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if info.tokenizer.count_prompt([*head, *history[starts[mid] :], *tail]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return starts[lo]
