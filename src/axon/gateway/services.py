"""What the HTTP layer needs from the rest of the process, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field

from axon.auth.authenticator import Authenticator
from axon.auth.keys import KeyStore
from axon.config import Settings
from axon.ratelimit.base import RateLimiter
from axon.sessions.manager import Check, SessionManager

__all__ = ["Check", "Services"]


@dataclass
class Services:
    settings: Settings
    manager: SessionManager
    limiter: RateLimiter
    keys: KeyStore
    authenticator: Authenticator
    #: Named readiness checks for ``/readyz`` (model loaded, store reachable, ...).
    checks: dict[str, Check] = field(default_factory=dict)
