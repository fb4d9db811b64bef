"""pytest imports test modules by their file name (the test folders are not packages), so
two test files with one name break collection of the whole suite: caught here, in the fast
tier, not only by a full run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_name_is_unique() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    repeated = sorted(name for name, count in names.items() if count > 1)
    assert not repeated, f"test modules sharing a name: {repeated}"
