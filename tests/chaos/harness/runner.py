"""One scenario from start to verdict: its datastores and stack, the workload, the fault,
the time until the stack is whole again, and the checker's verdict."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from dataclasses import dataclass
from pathlib import Path

from .checker import Verdict, check, settle
from .datastores import Datastores
from .driver import Workload
from .evidence import digest
from .recovery import final_state, whole_again
from .report import Row
from .scenario import Aborted, Run, Scenario, aborted
from .stack import REPLY_TOKENS, ChaosStack

#: Longest the workload may take to wind down once told to stop (each turn may re-attach
#: for 90 s after its last event).
WIND_DOWN_S = 240.0


@dataclass
class Outcome:
    row: Row
    verdict: Verdict
    problems: list[str]
    notes: list[str]
    evidence: list[str]
    metrics: list[str]
    logs: Path

    def explain(self) -> str:
        parts = [f"scenario {self.row.scenario}: " + ("; ".join(self.problems) or "ok")]
        if self.notes:
            parts += ["notes:", *(f"  {n}" for n in self.notes)]
        if self.verdict.findings:
            parts += [
                "checker findings (first 15):",
                *(f"  {f}" for f in self.verdict.findings[:15]),
            ]
        if self.metrics:
            parts += ["counters at the end (each process since its last start):"]
            parts += [f"  {m}" for m in self.metrics]
        if self.evidence:
            parts += [f"warnings and errors in the logs ({self.logs}):"]
            parts += [f"  {e}" for e in self.evidence]
        return "\n".join(parts)


def execute(scenario: Scenario, data_dir: Path) -> Outcome:
    plan = scenario.plan
    started = time.monotonic()
    stores = Datastores.start(plan.private())
    try:
        env = {**stores.env(), **plan.env}
        stack = ChaosStack(
            data_dir,
            env,
            managers=plan.managers,
            workers=plan.workers,
            gateways=plan.gateways,
            member_env=stores.member_env,
        )
        try:
            run, verdict, whole = asyncio.run(_drive(scenario, stores, stack))
        finally:
            stack.stop()
            stores.keep_logs(data_dir)
    finally:
        stores.stop()
    problems = _problems(verdict, whole) + run.problems
    row = Row(
        scenario=plan.name,
        sent=verdict.sent,
        accepted=verdict.accepted,
        lost=verdict.lost,
        duplicated=verdict.duplicated,
        cut_short=verdict.cut_short,
        mismatched=verdict.mismatched,
        stalled=verdict.stalled,
        orphaned=verdict.orphaned,
        whole_again_s=whole,
        duration_s=time.monotonic() - started,
        passed=not problems,
        problems=problems,
    )
    logs = {**stack.logs(), **{n: data_dir / f"{n}.log" for n in stores.logs()}}
    evidence = digest(logs) if problems else []
    return Outcome(row, verdict, problems, run.notes, evidence, run.metrics, data_dir)


def _problems(v: Verdict, whole: float | None) -> list[str]:
    found = []
    for name in ("lost", "duplicated", "mismatched", "stalled", "orphaned"):
        if getattr(v, name):
            found.append(f"{getattr(v, name)} {name}")
    if v.accepted == 0:
        found.append("no turn was accepted")
    if whole is None:
        found.append("not whole again after the fault")
    return found


async def _drive(
    scenario: Scenario, stores: Datastores, stack: ChaosStack
) -> tuple[Run, Verdict, float | None]:
    plan = scenario.plan
    load = Workload(
        stack.gateway_urls,
        plan.conversations,
        poison_marker=plan.poison_marker,
        poison_every=plan.poison_every,
        drop_after_tokens=plan.drop_after_tokens,
        retry_refused=plan.retry_refused,
    )
    run = Run(plan, stores, stack, load)
    if stores.started:
        run.note(
            "private datastores started in "
            + ", ".join(f"{name} {s:.1f} s" for name, s in stores.started.items())
        )
    whole: asyncio.Task[float | None] | None = None
    try:
        driving = asyncio.create_task(load.run())
        streaming = await load.wait_streaming(plan.streaming_at_fault)
        run.note(f"{streaming} replies mid-stream when the fault began")
        # From the moment the fault ends, even if the scenario goes on with checks of its
        # own (or restarts what it killed: that boot is part of being whole again).
        whole = asyncio.create_task(whole_again(run))
        await scenario.fault(run)
        if run.fault_ended_at is None:
            run.end_fault()
        await run.sleep(plan.after_s)
        load.stop()
        await _wind_down(run, driving)
        whole_s = await whole
        if whole_s is not None and run.fault_began_at is not None:
            assert run.fault_ended_at is not None
            since = run.fault_ended_at - run.fault_began_at + whole_s
            run.note(f"whole again {since:.1f} s after the fault struck")
        stored = await settle(stores.store_url, load.turns, load.session_ids)
        verdict = check(load.turns, stored, REPLY_TOKENS)
        run.stored = stored
        await final_state(run)
        if scenario.verify is not None:
            verified = scenario.verify(run, verdict)
            if inspect.isawaitable(verified):
                await verified
        if load.session_errors:
            run.note(f"session creation errors: {load.session_errors[:5]}")
        return run, verdict, whole_s
    finally:
        if whole is not None and not whole.done():
            whole.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await whole
        await load.close()


async def _wind_down(run: Run, driving: asyncio.Task[None]) -> None:
    """Wait for every conversation to follow its last turn to the end."""
    deadline = time.monotonic() + WIND_DOWN_S
    while not driving.done():
        if aborted() or time.monotonic() > deadline:
            if not aborted():
                run.problems.append(f"the workload did not wind down in {WIND_DOWN_S:.0f} s")
            driving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driving
            if aborted():
                raise Aborted("the test session is ending")
            return
        await asyncio.wait({driving}, timeout=0.5)
    driving.result()
