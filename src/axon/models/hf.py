"""A Hugging Face tokenizer and its chat template, as the `vllm` engine renders prompts.

Takes an already loaded tokenizer, so that this module imports neither transformers nor
vLLM: they live in their own environment (``scripts/setup-vllm.sh``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from axon.core.errors import ConfigError, InvalidRequest
from axon.core.types import ChatMessage
from axon.models import template
from axon.models.base import TextTokenizer, encode_utf8


class HfChatTokenizer(TextTokenizer):
    """Renders a conversation with the model's Hugging Face chat template and tokenizes it.

    The engine sends vLLM these very token ids, so the count the front end fits against
    the context window is exactly what vLLM decodes. Only the template produces control
    tokens: a user who types ``<|im_end|>`` gets those characters, not a turn end.

    Not safe to share between threads: a fast tokenizer switches its special-token
    parsing on and off around each call (and HF documents its tokenizers as not
    thread-safe anyway).
    """

    def __init__(self, hf_tokenizer: Any) -> None:
        super().__init__()
        self.hf = hf_tokenizer
        from jinja2 import TemplateError

        self._template_errors: tuple[type[Exception], ...] = (ValueError, TemplateError)
        self._check_text_stays_text()

    def _check_text_stays_text(self) -> None:
        """Refuse a tokenizer that still turns typed control tokens into real ones: a
        transformers release that does not know ``split_special_tokens`` ignores it."""
        special = set(self.hf.all_special_ids)
        for token in self.hf.all_special_tokens:
            if special.intersection(self.tokenize_text(token)):
                raise ConfigError(
                    f"The model's tokenizer ({type(self.hf).__name__}) parses control tokens "
                    f"such as {token!r} in message text: the vllm engine needs a transformers "
                    "release whose tokenizers honour split_special_tokens (run "
                    "`bash scripts/setup-vllm.sh`)."
                )

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text, ending with the header of the assistant's reply."""
        conversation = [{"role": m.role, "content": m.content} for m in messages]
        try:
            text = self.hf.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            )
        except self._template_errors as exc:
            # The template's own raise_exception() messages describe the conversation's
            # shape (roles, order), never its text.
            raise InvalidRequest(
                f"The model's chat template rejected the conversation: {exc}", param="messages"
            ) from None
        return str(text)

    def tokenize_template(self, text: str) -> list[int]:
        """Token ids of template output: control tokens (``<|im_start|>``) parsed as such.

        No BOS or EOS is added: the template writes the special tokens it wants itself,
        and adding them again would change the prompt the model was trained on.
        """
        encode_utf8(text)
        return list(self.hf.encode(text, add_special_tokens=False, split_special_tokens=False))

    def tokenize_text(self, text: str) -> list[int]:
        """Token ids of ``text`` as plain text: a control token's spelling is just
        characters."""
        # A lone surrogate makes the Rust tokenizer raise a TypeError that names no cause.
        encode_utf8(text)
        return list(self.hf.encode(text, add_special_tokens=False, split_special_tokens=True))

    def count_text(self, text: str) -> int:
        return len(self.tokenize_text(text))

    def encode_prompt(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Token ids of the rendered prompt in which only the template can produce control
        tokens (see ``axon.models.template``)."""
        return template.encode_prompt(
            messages,
            self.render_prompt,
            lambda piece, _first: self.tokenize_template(piece),
            self.tokenize_text,
        )

    def encode(self, messages: Sequence[ChatMessage], prefix: str = "") -> tuple[int, list[int]]:
        """(prompt tokens, ids to decode): the prompt, continued by ``prefix``, the
        model's own reply so far (plain text, like any message text)."""
        tokens = self.encode_prompt(messages)
        if not prefix:
            return len(tokens), tokens
        return len(tokens), tokens + self.tokenize_text(prefix)

    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.encode_prompt(messages))
