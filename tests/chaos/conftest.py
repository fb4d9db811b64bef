"""The chaos suite's scheduling: a scenario is attached to its test with
``@pytest.mark.chaos(SCENARIO)``; every selected scenario starts in the background when the
first chaos test runs, and each test waits for its own (see ``harness/schedule.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos.harness import report
from chaos.harness.scenario import Scenario
from chaos.harness.schedule import ROWS, Scenarios


def scenario_of(item: pytest.Item) -> Scenario | None:
    for mark in item.iter_markers("chaos"):
        if mark.args and isinstance(mark.args[0], Scenario):
            return mark.args[0]
    return None


@pytest.fixture(scope="session")
def chaos(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenarios]:
    selected = [s for item in request.session.items if (s := scenario_of(item)) is not None]
    scenarios = Scenarios(selected, tmp_path_factory)
    try:
        yield scenarios
    finally:
        scenarios.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not ROWS:
        return
    terminalreporter.section("chaos scenarios")
    terminalreporter.write_line(report.COLUMNS)
    for row in ROWS:
        terminalreporter.write_line(report.line(row))
