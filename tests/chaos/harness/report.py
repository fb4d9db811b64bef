"""One row per scenario: printed, and appended as JSON to the file named by
AXON_TEST_CHAOS_REPORT (from which docs/reliability.md can be built)."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass

_WRITE = threading.Lock()


@dataclass
class Row:
    scenario: str
    sent: int
    accepted: int
    lost: int
    duplicated: int
    cut_short: int
    mismatched: int
    stalled: int
    orphaned: int
    #: From the end of the fault until every process was ready and a fresh turn succeeded.
    whole_again_s: float | None
    duration_s: float
    passed: bool
    problems: list[str]


COLUMNS = (
    f"{'scenario':<32} {'sent':>5} {'acc':>5} {'lost':>5} {'dup':>4} {'cut':>4} "
    f"{'mism':>5} {'stall':>5} {'orph':>5} {'whole s':>8} {'run s':>6}  result"
)


def line(row: Row) -> str:
    whole = f"{row.whole_again_s:.1f}" if row.whole_again_s is not None else "never"
    return (
        f"{row.scenario:<32} {row.sent:>5} {row.accepted:>5} {row.lost:>5} "
        f"{row.duplicated:>4} {row.cut_short:>4} {row.mismatched:>5} {row.stalled:>5} "
        f"{row.orphaned:>5} {whole:>8} {row.duration_s:>6.0f}  "
        + ("pass" if row.passed else "FAIL")
    )


def append(row: Row) -> None:
    path = os.environ.get("AXON_TEST_CHAOS_REPORT")
    if not path:
        return
    with _WRITE, open(path, "a") as f:
        f.write(json.dumps(asdict(row)) + "\n")
