"""What a request may carry and the prompt it becomes: caps on messages and text, valid
Unicode, the reply budget, and a prompt fitted to the context window and counted once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from axon.config import LimitSettings
from axon.core.errors import InvalidRequest, PayloadTooLarge
from axon.core.types import ChatMessage
from axon.models.base import ModelInfo
from axon.sessions.prompt import fit_and_count, reserve_for_reply


@dataclass(frozen=True, slots=True)
class Prompt:
    messages: list[ChatMessage]
    #: Prompt tokens, as the model's tokenizer counts them.
    tokens: int
    #: Tokens kept for the reply (``max_tokens``, or the model's default).
    reply_budget: int


class Intake:
    def __init__(self, limits: LimitSettings) -> None:
        self._limits = limits

    def check_text(self, text: str, param: str) -> None:
        cap = self._limits.max_message_chars
        if len(text) > cap:
            raise PayloadTooLarge(
                f"{param} is {len(text)} characters; at most {cap} are accepted", param=param
            )
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                f"{param} is not valid Unicode (it holds a lone surrogate)", param=param
            ) from None

    def check_messages(self, messages: Sequence[ChatMessage]) -> None:
        if not messages:
            raise InvalidRequest("messages must not be empty", param="messages")
        cap = self._limits.max_messages
        if len(messages) > cap:
            raise InvalidRequest(
                f"the request has {len(messages)} messages; at most {cap} are accepted",
                param="messages",
            )
        for i, message in enumerate(messages):
            self.check_text(message.content, f"messages.{i}.content")

    async def prompt(
        self,
        info: ModelInfo,
        *,
        system: str | None,
        history: list[ChatMessage],
        new: list[ChatMessage],
        max_tokens: int | None,
    ) -> Prompt:
        """The prompt, fitted and counted. Tokenizing is CPU work that grows with the
        input: it runs in a thread so a large request never stalls the event loop."""
        budget = reserve_for_reply(info, max_tokens)
        messages, tokens = await asyncio.to_thread(
            fit_and_count, info, system=system, history=history, new=new, reserve=budget
        )
        cap = self._limits.max_prompt_tokens
        if cap and tokens > cap:
            raise InvalidRequest(
                f"the prompt is {tokens} tokens; this server accepts at most {cap} prompt "
                "tokens per request",
                param="messages",
            )
        return Prompt(messages, tokens, budget)
