"""Draining on shutdown: once a process is told to stop, its readiness goes false at once
and every open stream ends with an ``error`` event that asks the client to re-attach (the
reply goes on elsewhere), instead of being cut when the process exits."""

from __future__ import annotations

from axon.core.errors import ShuttingDown


class Drain:
    """A flag, set once. A plain attribute rather than an event: it is set from a signal
    handler, and the streams read it between entries, which costs nothing per entry."""

    def __init__(self) -> None:
        self.draining = False

    def start(self) -> None:
        self.draining = True

    def check(self) -> None:
        """Raise ``ShuttingDown`` once draining (a stream then ends with a re-attach)."""
        if self.draining:
            raise ShuttingDown("this server is shutting down; re-attach to continue")
