"""What a client saw of one chat turn, and the reply the fake engine must have given."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from axon.core.types import ChatMessage
from axon.worker.engines.fake import FakeEngine


def event_position(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def expected_reply(content: str, reply_tokens: int) -> str:
    """The fake engine's whole reply to ``content``: deterministic, so any repeated or
    missing token in a stored reply shows."""
    engine = FakeEngine(reply_tokens=reply_tokens)
    return "".join(engine.reply_words([ChatMessage(role="user", content=content)]))


@dataclass
class Turn:
    conversation: int
    index: int
    session_id: str
    key: str
    content: str
    poison: bool = False
    sent_at: float = field(default_factory=time.monotonic)
    #: POSTs sent for this turn (all with the same Idempotency-Key).
    attempts: int = 0
    #: Why each POST that did not reach ``turn`` failed ("503 queue_unavailable", ...).
    refusals: list[str] = field(default_factory=list)
    #: How long each refused POST took to be answered.
    refused_after_s: list[float] = field(default_factory=list)
    #: ``reply_id`` of every ``turn`` event received: more than one distinct id means a
    #: retry with the same key started a second turn.
    reply_ids: list[str] = field(default_factory=list)
    user_message_ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)
    #: Token events whose id was not after every id seen before (a repeat).
    repeated_ids: int = 0
    final: str | None = None  # "done" or "error"
    final_id: str | None = None
    final_data: Any = None
    reattaches: int = 0
    #: Why each stream ended before its final event.
    drops: list[str] = field(default_factory=list)
    accepted_at: float | None = None
    last_event_at: float | None = None
    #: Longest wait between two events of the reply, once accepted, and how many tokens
    #: had arrived before it.
    max_gap_s: float = 0.0
    max_gap_after_tokens: int = 0
    gave_up: str | None = None

    @property
    def accepted(self) -> bool:
        return bool(self.reply_ids)

    @property
    def reply_id(self) -> str | None:
        return self.reply_ids[0] if self.reply_ids else None

    @property
    def streaming(self) -> bool:
        return self.accepted and self.final is None and bool(self.texts)

    @property
    def last_event_id(self) -> str | None:
        if not self.event_ids:
            return None
        return max(self.event_ids, key=event_position)

    @property
    def error_code(self) -> str | None:
        if self.final != "error" or not isinstance(self.final_data, dict):
            return None
        error = self.final_data.get("error")
        return str(error.get("code")) if isinstance(error, dict) else None

    def client_text(self) -> str:
        """The reply as the client assembled it: every token event, in order, repeats
        included. A finished reply replayed from the store comes as a ``done`` event without
        an id and without tokens; its content completes what the tokens showed."""
        text = "".join(self.texts)
        if self.final == "done" and self.final_id is None and isinstance(self.final_data, dict):
            message = self.final_data.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str) and content.startswith(text):
                return content
        return text

    def saw(self, now: float) -> None:
        """An event of the reply arrived at ``now``."""
        if self.last_event_at is not None and now - self.last_event_at > self.max_gap_s:
            self.max_gap_s = now - self.last_event_at
            self.max_gap_after_tokens = len(self.texts)
        self.last_event_at = now

    def describe(self) -> str:
        return (
            f"conversation {self.conversation} turn {self.index} key={self.key} "
            f"reply={self.reply_id} attempts={self.attempts} refusals={self.refusals[-3:]} "
            f"final={self.final}/{self.error_code} reattaches={self.reattaches} "
            f"drops={self.drops[-3:]} gave_up={self.gave_up}"
        )
