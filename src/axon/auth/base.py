"""What every credential check shares: the failure it raises and the message clients get."""

from __future__ import annotations

from typing import Literal

#: Why a credential was refused: a metric label and a log field, never shown to clients.
FailureReason = Literal[
    "missing",
    "malformed",
    "unknown_key",
    "revoked",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "bad_algorithm",
    "bad_claims",
    "unknown_kid",
    "jwks_unavailable",
    "admin_required",
]

#: The one message every refused credential gets, whatever the reason.
BAD_CREDENTIAL_MESSAGE = "invalid or missing credentials"


class AuthFailure(Exception):
    """A credential was refused; ``reason`` says why (for metrics and logs only)."""

    def __init__(self, reason: FailureReason) -> None:
        super().__init__(reason)
        self.reason: FailureReason = reason
