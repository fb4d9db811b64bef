"""Riding out a short Redis outage: a worker keeps its job and retries, rather than fail a
reply whose tokens its client is already reading."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from axon.core.errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

_FIRST_DELAY_S = 0.1
_MAX_DELAY_S = 2.0


async def patiently(call: Callable[[], Awaitable[T]], outage_s: float) -> T:
    """``call()``, retried while it raises ``Unavailable``, for up to ``outage_s`` seconds;
    then the last ``Unavailable`` is raised. Only for calls that are safe to repeat (every
    stream operation is: appends carry their offset, claims and releases are atomic)."""
    deadline = time.monotonic() + outage_s
    delay = _FIRST_DELAY_S
    warned = False
    while True:
        try:
            return await call()
        except Unavailable:
            if time.monotonic() + delay > deadline:
                raise
            if not warned:
                log.warning("Redis unavailable; holding the job and retrying")
                warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)
