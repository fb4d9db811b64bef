"""Model description and the tokenizer interface used to fit prompts to the context window."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

from axon.core.errors import InvalidRequest
from axon.core.types import ChatMessage, Role


class Tokenizer(abc.ABC):
    """Counts tokens the way an engine renders a conversation.

    A request may carry thousands of messages, so every method must take time linear in
    the text it is given: fitting a prompt calls ``count_message`` once per history
    message it keeps and ``count_prompt`` only a few times on the whole prompt.
    """

    @abc.abstractmethod
    def count_prompt(self, messages: Sequence[ChatMessage]) -> int:
        """Tokens the engine's prompt for ``messages`` takes, chat template included,
        with the generation prompt for the assistant's reply."""

    def count_message(self, message: ChatMessage) -> int:
        """Tokens one more ``message`` adds to a prompt. The difference of two renderings
        cancels whatever the template adds once (a default system prompt, the generation
        prompt), so only the message's own tokens remain.

        This renders three messages per call; a tokenizer that can count text on its own
        should derive from ``TextTokenizer`` instead, which renders nothing per message.
        """
        return self.count_prompt([message, message]) - self.count_prompt([message])


class TextTokenizer(Tokenizer):
    """A tokenizer that counts a message's text on its own: a message then costs its
    role's share of the template, measured once per role, plus its text's tokens.

    That is exact when the template wraps each text in pieces that depend only on the
    role, as ChatML does (``<|im_start|>role\\n`` text ``<|im_end|>\\n``); for other
    templates it is the estimate that ``fit_prompt`` checks against a real rendering.
    """

    def __init__(self) -> None:
        # Filled once per role; a race only computes the same number twice.
        self._overheads: dict[Role, int] = {}

    @abc.abstractmethod
    def count_text(self, text: str) -> int:
        """Tokens of ``text`` as a message's content, without any template."""

    def count_message(self, message: ChatMessage) -> int:
        overhead = self._overheads.get(message.role)
        if overhead is None:
            overhead = super().count_message(ChatMessage(role=message.role, content=""))
            self._overheads[message.role] = overhead
        return overhead + self.count_text(message.content)


def encode_utf8(text: str) -> bytes:
    """``text`` as UTF-8. JSON can spell a lone surrogate (``"\\ud800"``), which has no
    UTF-8 form: that is the client's error, not the server's."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(
            "message text is not valid Unicode (lone surrogate)", param="messages"
        ) from None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    context_window: int
    tokenizer: Tokenizer
    #: The reply length when a request gives no ``max_tokens``: each model its own.
    default_max_tokens: int = 512
    owned_by: str = "axon"
