"""A tokenizer that needs no model file: an estimate of one token per few bytes of UTF-8
plus ChatML's per-message overhead. The fake engine counts with it exactly; for a remote
model whose tokenizer is not at hand it is the estimate prompts are fitted with (the engine
still refuses what does not fit)."""

from __future__ import annotations

from collections.abc import Sequence

from axon.core.types import ChatMessage
from axon.models.base import TextTokenizer, encode_utf8

#: ChatML spends ``<|im_start|>role\n`` and ``<|im_end|>\n`` on every message.
PER_MESSAGE_OVERHEAD = 5
GENERATION_PROMPT = 3


class EstimateTokenizer(TextTokenizer):
    def __init__(self, bytes_per_token: int = 4) -> None:
        super().__init__()
        self.bytes_per_token = bytes_per_token

    def count_text(self, text: str) -> int:
        return -(-len(encode_utf8(text)) // self.bytes_per_token)

    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        return GENERATION_PROMPT + sum(
            PER_MESSAGE_OVERHEAD + self.count_text(m.content) for m in messages
        )
