"""Identifier generation: sortable, URL-safe, prefixed by what they name."""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    """Return ``prefix_`` followed by 12 hex digits of milliseconds and 10 random hex digits.

    Time first keeps ids roughly sortable by creation, which makes database indexes and
    paginated listings cheap; the random tail makes collisions across replicas negligible.
    """
    return f"{prefix}_{int(time.time() * 1000):012x}{os.urandom(5).hex()}"
