"""Prompt encoding in which only the chat template makes control tokens: a user who types
``<|im_end|>`` gets those characters, not a turn end. Shared by every tokenizer that owns a
chat template (GGUF, Hugging Face)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Sequence

from axon.core.types import ChatMessage

#: Renders messages through the chat template, with the generation prompt.
Render = Callable[[Sequence[ChatMessage]], str]
#: Tokenizes a piece of the template, control tokens parsed; ``first`` is the prompt's start.
TemplateTokens = Callable[[str, bool], list[int]]
#: Tokenizes message text as plain text.
TextTokens = Callable[[str], list[int]]


def encode_prompt(
    messages: Sequence[ChatMessage],
    render: Render,
    template: TemplateTokens,
    text: TextTokens,
) -> list[int]:
    """Token ids of the rendered prompt.

    The template is rendered with a numbered placeholder for each message's text; the
    template's own pieces are tokenized with control tokens parsed, the texts without.
    Each piece is tokenized on its own, so a message costs the same wherever it stands
    (which ``count_message`` relies on), and the rendering is split in one pass: with
    thousands of messages, searching it once per message would be quadratic.
    """
    tag = uuid.uuid4().hex
    rendered = render(
        [
            ChatMessage(role=m.role, content=f"\x00axon-{tag}-{i}\x00")
            for i, m in enumerate(messages)
        ]
    )
    # Template pieces at even positions, placeholder numbers at odd ones.
    parts = re.split(f"\x00axon-{tag}-([0-9]+)\x00", rendered)
    if parts[1::2] != [str(i) for i in range(len(messages))]:
        # A template that drops, repeats or reorders message text, or transforms it:
        # placeholders cannot stand in for it, so the whole rendering is tokenized (and the
        # guarantee does not hold for such a template).
        return template(render(messages), True)
    # Tokenizers spend some 20-30 µs on every call, as long as tokenizing 60 characters:
    # the template's few distinct pieces, and tiny texts sent many times over, are
    # tokenized once each.
    pieces: dict[tuple[str, bool], list[int]] = {}
    texts: dict[str, list[int]] = {}
    tokens: list[int] = []

    def piece(value: str) -> list[int]:
        key = (value, not tokens)
        if key not in pieces:
            pieces[key] = template(value, not tokens)
        return pieces[key]

    for before, message in zip(parts[:-1:2], messages, strict=True):
        tokens += piece(before)
        if message.content not in texts:
            texts[message.content] = text(message.content)
        tokens += texts[message.content]
    return tokens + piece(parts[-1])
