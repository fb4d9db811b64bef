"""A deterministic tokenizer that needs no model file: one token per 4 bytes of UTF-8,
plus the chat template's per-message overhead. Used with the fake engine."""

from __future__ import annotations

from collections.abc import Sequence

from axon.core.types import ChatMessage
from axon.models.base import Tokenizer

#: ChatML spends ``<|im_start|>role\n`` and ``<|im_end|>\n`` on every message.
PER_MESSAGE_OVERHEAD = 5
GENERATION_PROMPT = 3


def count_text(text: str) -> int:
    return (len(text.encode()) + 3) // 4


class FakeTokenizer(Tokenizer):
    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        return GENERATION_PROMPT + sum(
            PER_MESSAGE_OVERHEAD + count_text(m.content) for m in messages
        )
