"""Runs the selected scenarios in the background, several at once (each on its own ports,
datastores and stack), and hands each test its own scenario's outcome.

At most ``AXON_TEST_CHAOS_PARALLEL`` (default 3) run at a time, longest first; 1 runs them
one by one.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from . import report
from .runner import Outcome, execute
from .scenario import Scenario, abort

PARALLEL = max(1, int(os.environ.get("AXON_TEST_CHAOS_PARALLEL", "3")))
#: Every row reported in this test session, for the summary at its end.
ROWS: list[report.Row] = []


class Scenarios:
    def __init__(self, scenarios: list[Scenario], tmp: pytest.TempPathFactory) -> None:
        self._tmp = tmp
        self._pool = ThreadPoolExecutor(max_workers=PARALLEL, thread_name_prefix="chaos")
        self._futures: dict[str, Future[Outcome]] = {}
        for scenario in sorted(scenarios, key=lambda s: -s.plan.cost_s):
            self._submit(scenario)

    def _submit(self, scenario: Scenario) -> Future[Outcome]:
        name = scenario.plan.name
        if name not in self._futures:
            data_dir = self._tmp.mktemp(f"chaos-{name}")
            self._futures[name] = self._pool.submit(execute, scenario, data_dir)
        return self._futures[name]

    def outcome(self, scenario: Scenario) -> Outcome:
        outcome = self._submit(scenario).result()
        ROWS.append(outcome.row)
        report.append(outcome.row)
        notes = "".join(f"\n    {n}" for n in outcome.notes)
        print(f"\n{report.COLUMNS}\n{report.line(outcome.row)}{notes}")
        return outcome

    def check(self, scenario: Scenario) -> Outcome:
        """The scenario's outcome; fails the test with the evidence if a guarantee broke."""
        outcome = self.outcome(scenario)
        if outcome.problems:
            pytest.fail(outcome.explain(), pytrace=False)
        return outcome

    def close(self) -> None:
        abort()
        self._pool.shutdown(wait=True, cancel_futures=True)
