"""Model description and the tokenizer interface used to fit prompts to the context window."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from axon.core.types import ChatMessage


class Tokenizer(abc.ABC):
    @abc.abstractmethod
    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens the engine's prompt for ``messages`` takes, chat template included,
        with the generation prompt for the assistant's reply."""

    def count_message(self, message: ChatMessage) -> int:
        """Tokens one more ``message`` adds to a prompt. The difference of two renderings
        cancels whatever the template adds once (a default system prompt, the generation
        prompt), so only the message's own tokens remain."""
        return self.count_prompt([message, message]) - self.count_prompt([message])


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    context_window: int
    tokenizer: Tokenizer
    owned_by: str = "axon"
