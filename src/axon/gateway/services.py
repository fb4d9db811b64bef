"""What the HTTP layer needs from the rest of the process, built by the CLI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from axon.auth.authenticator import Authenticator
from axon.auth.keys import KeyStore
from axon.config import Settings
from axon.ratelimit.base import RateLimiter
from axon.sessions.manager import SessionManager

#: A readiness check: returns normally when ready, raises (any error) when not.
Check = Callable[[], Awaitable[None]]


@dataclass
class Services:
    settings: Settings
    manager: SessionManager
    limiter: RateLimiter
    keys: KeyStore
    authenticator: Authenticator
    #: Named readiness checks for ``/readyz`` (model loaded, store reachable, ...).
    checks: dict[str, Check] = field(default_factory=dict)
