"""Idempotency keys: a retried turn with the same key is the same turn, and the same key
with another request is refused (never silently answered with the first one's reply)."""

from __future__ import annotations

import hashlib
import json

from axon.core.errors import IdempotencyKeyReused
from axon.core.types import SamplingParams
from axon.sessions.records import MessageRecord


def request_hash_of(content: str, params: SamplingParams) -> str:
    """What makes two sends of a turn the same request: its content and sampling."""
    body = json.dumps([content, params.model_dump(mode="json")], sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()


def same_request(earlier: MessageRecord, request_hash: str | None) -> None:
    if request_hash is not None and earlier.request_hash not in (None, request_hash):
        raise IdempotencyKeyReused(
            "this Idempotency-Key was used for a different request in this session",
            param="Idempotency-Key",
        )
