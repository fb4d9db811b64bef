"""Axon processes crashed, paused, dropped or restarted under load, on the shared datastores
(each scenario in a namespace of its own)."""

from __future__ import annotations

import pytest

from chaos.harness.checker import Verdict
from chaos.harness.scenario import Plan, Run, Scenario
from chaos.harness.schedule import Scenarios

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

#: Longer than a lease (10 s) plus the takeover's own polling: another worker must have
#: continued the replies before the paused one wakes up.
PAUSE_S = 25.0
POISON = "always-fail-this"


# -- (1) a worker killed mid-stream ----------------------------------------------------------


async def _kill_worker(run: Run) -> None:
    victim = run.stack.workers[0]
    run.note(f"SIGKILL {victim.name} with {run.load.streaming()} replies mid-stream")
    await run.call(run.stack.kill, victim)
    await run.sleep(5)
    run.end_fault()
    await run.restart(victim)


WORKER_KILLED = Scenario(Plan("worker-kill-9", cost_s=50), _kill_worker)


@pytest.mark.chaos(WORKER_KILLED)
def test_worker_killed_mid_stream(chaos: Scenarios) -> None:
    chaos.check(WORKER_KILLED)


# -- (2) a worker paused past the takeover time, then woken ----------------------------------


async def _pause_worker(run: Run) -> None:
    victim = run.stack.workers[0]
    run.note(f"SIGSTOP {victim.name} for {PAUSE_S:.0f} s")
    await run.call(run.stack.pause, victim)
    await run.sleep(PAUSE_S)
    await run.call(run.stack.resume, victim)
    run.end_fault()


def _taken_over(run: Run, verdict: Verdict) -> None:
    stalled = sorted(
        (t for t in run.load.turns if t.accepted and t.max_gap_s >= PAUSE_S - 3),
        key=lambda t: -t.max_gap_s,
    )
    longest = max((t.max_gap_s for t in run.load.turns if t.accepted), default=0.0)
    run.note(f"longest wait between two events of a reply: {longest:.1f} s")
    for turn in stalled[:5]:
        run.note(
            f"stalled {turn.max_gap_s:.1f} s after {turn.max_gap_after_tokens} tokens: "
            f"{turn.describe()}"
        )
    # A reply that waited out the whole pause was not taken over: it waited for the sleeper.
    run.expect(
        not stalled,
        f"{len(stalled)} replies stalled for the whole pause ({longest:.1f} s): nobody took "
        "over from the paused worker",
    )


WORKER_PAUSED = Scenario(
    Plan("worker-sigstop-25s", after_s=10, cost_s=75), _pause_worker, _taken_over
)


@pytest.mark.chaos(WORKER_PAUSED)
def test_worker_paused_past_takeover(chaos: Scenarios) -> None:
    chaos.check(WORKER_PAUSED)


# -- (3) a poison job among normal turns -----------------------------------------------------


async def _poison_load(run: Run) -> None:
    await run.sleep(15)


def _poison_contained(run: Run, verdict: Verdict) -> None:
    poison = [t for t in run.load.turns if t.accepted and t.poison]
    run.expect(bool(poison), "no poison turn was accepted: nothing was tested")
    for turn in run.load.turns:
        if not turn.accepted or turn.reply_id is None:
            continue
        outcome = verdict.outcome.get(turn.reply_id)
        if turn.poison:
            run.expect(
                outcome == "cut" and turn.error_code == "job_failed",
                f"poison turn ended {outcome}/{turn.error_code}: {turn.describe()}",
            )
        else:
            run.expect(outcome != "cut", f"a normal turn was cut short: {turn.describe()}")


POISON_JOB = Scenario(
    Plan(
        "poison-job",
        env={"AXON_ENGINE__FAKE_FAIL_MARKER": POISON, "AXON_QUEUE__DELIVERY_LIMIT": "3"},
        poison_marker=POISON,
        poison_every=4,
        cost_s=45,
    ),
    _poison_load,
    _poison_contained,
)


@pytest.mark.chaos(POISON_JOB)
def test_poison_job_among_normal_turns(chaos: Scenarios) -> None:
    chaos.check(POISON_JOB)


# -- (11) clients drop and resume on the other gateway ---------------------------------------


async def _clients_drop(run: Run) -> None:
    # The fault is the workload's own: every turn's first stream is dropped by its client.
    await run.sleep(15)


def _resumed(run: Run, verdict: Verdict) -> None:
    dropped = [t for t in run.load.turns if "client dropped the stream" in t.drops]
    run.note(f"{len(dropped)} turns dropped by their client and re-attached")
    run.expect(len(dropped) >= 8, f"only {len(dropped)} turns were dropped: too few to tell")


CLIENT_DROPS = Scenario(
    Plan("client-drop-resume", drop_after_tokens=(1, 25), cost_s=45), _clients_drop, _resumed
)


@pytest.mark.chaos(CLIENT_DROPS)
def test_client_drops_and_resumes_on_the_other_gateway(chaos: Scenarios) -> None:
    chaos.check(CLIENT_DROPS)


# -- (12) a session manager killed with many streams open ------------------------------------


async def _kill_manager(run: Run) -> None:
    victim = run.stack.managers[0]
    run.note(f"SIGKILL {victim.name} with {run.load.streaming()} replies mid-stream")
    await run.call(run.stack.kill, victim)
    await run.sleep(5)
    run.end_fault()
    await run.restart(victim)


MANAGER_KILLED = Scenario(
    Plan("manager-kill-9-50-streams", conversations=50, streaming_at_fault=30, cost_s=70),
    _kill_manager,
)


@pytest.mark.chaos(MANAGER_KILLED)
def test_session_manager_killed_with_many_streams(chaos: Scenarios) -> None:
    chaos.check(MANAGER_KILLED)


# -- (13) a gateway killed with many streams open --------------------------------------------


async def _kill_gateway(run: Run) -> None:
    victim = run.stack.gateways[0]
    run.note(f"SIGKILL {victim.name} with {run.load.streaming()} replies mid-stream")
    await run.call(run.stack.kill, victim)
    await run.sleep(5)
    run.end_fault()
    await run.restart(victim)


GATEWAY_KILLED = Scenario(
    Plan("gateway-kill-9-32-streams", conversations=32, streaming_at_fault=20, cost_s=60),
    _kill_gateway,
)


@pytest.mark.chaos(GATEWAY_KILLED)
def test_gateway_killed_with_many_streams(chaos: Scenarios) -> None:
    chaos.check(GATEWAY_KILLED)


# -- (14) a rolling restart: SIGTERM to every process in turn, under load --------------------

#: Longest a process may take to exit after SIGTERM: the worker's grace (20 s) and some.
STOP_WITHIN_S = 45.0


async def _rolling_restart(run: Run) -> None:
    stack = run.stack
    for member in [*stack.workers, *stack.managers, *stack.gateways]:
        took, code = await run.call(stack.terminate, member, STOP_WITHIN_S)
        run.note(f"{member.name} exited {took:.1f} s after SIGTERM, code {code}")
        run.expect(code is not None, f"{member.name} did not exit within {STOP_WITHIN_S:.0f} s")
        await run.restart(member)
        await run.sleep(2)
    run.end_fault()


ROLLING_RESTART = Scenario(Plan("rolling-restart-sigterm", cost_s=120), _rolling_restart)


@pytest.mark.chaos(ROLLING_RESTART)
def test_rolling_restart_under_load(chaos: Scenarios) -> None:
    chaos.check(ROLLING_RESTART)
