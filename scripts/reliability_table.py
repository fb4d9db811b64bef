"""Write the fault-injection suite's results into docs/reliability.md.

Reads the JSON rows a run appended to ``AXON_TEST_CHAOS_REPORT`` and replaces the table
under "## Measured" (everything after its paragraph) with them:

    AXON_TEST_CHAOS_REPORT=/tmp/chaos.jsonl python -m pytest tests/chaos -s
    python scripts/reliability_table.py /tmp/chaos.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
MARKER = "<!-- table: scripts/reliability_table.py -->"
HEADER = (
    "| Scenario | Turns sent | Accepted | Lost | Duplicated | Cut short | Text differs "
    "| Whole again (s) | Result |\n|---|---:|---:|---:|---:|---:|---:|---:|---|"
)


def table(rows: list[dict[str, object]]) -> str:
    lines = [HEADER]
    for r in sorted(rows, key=lambda r: str(r["scenario"])):
        whole = r["whole_again_s"]
        lines.append(
            f"| {r['scenario']} | {r['sent']} | {r['accepted']} | {r['lost']} "
            f"| {r['duplicated']} | {r['cut_short']} | {r['mismatched']} "
            f"| {'never' if whole is None else f'{float(str(whole)):.1f}'} "
            f"| {'pass' if r['passed'] else 'FAIL'} |"
        )
    return "\n".join(lines)


def main(path: str) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    doc = DOC.read_text()
    head = doc.split(MARKER)[0].rstrip("\n")
    DOC.write_text(f"{head}\n\n{MARKER}\n\n{table(rows)}\n")


if __name__ == "__main__":
    main(sys.argv[1])
