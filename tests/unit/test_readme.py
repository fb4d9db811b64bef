"""The README documents every setting, as the settings object describes it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_configuration_table_is_current() -> None:
    table = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "config_table.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    readme = (ROOT / "README.md").read_text()
    missing = [line for line in table.splitlines() if line not in readme]
    assert not missing, "README is out of date; paste `python scripts/config_table.py`:\n" + (
        "\n".join(missing)
    )
