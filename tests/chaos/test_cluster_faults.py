"""Clustered datastores failing under load: a RabbitMQ node of three killed, the workers'
broker connections blackholed, a RabbitMQ memory alarm, the Redis primary killed (Sentinel
promotes the replica), the PostgreSQL primary killed (the standby promoted), and a whole
availability zone lost. The stack is configured as production would be: every broker node's
URL, the Sentinels, both PostgreSQL hosts.

A failover's own time (Sentinel's vote, a promotion) is part of the fault: the fault ends
once the datastores serve again, and "whole again" is the time Axon took to follow; a note
gives the time from the fault itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial

import pytest

from chaos.harness.checker import Verdict
from chaos.harness.probes import new_session, probe_turn, rows_for_key, rows_in_session, summary
from chaos.harness.scenario import Plan, Run, Scenario
from chaos.harness.schedule import Scenarios

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

#: How long an operator or a failover manager takes to promote the PostgreSQL standby once
#: the primary is gone (a managed Multi-AZ database takes longer; the wait is the same kind).
PROMOTE_AFTER_S = 5.0


# -- (4) a RabbitMQ node of three killed ---------------------------------------------------------


async def _rabbitmq_node_killed(run: Run) -> None:
    rabbitmq = run.stores.rabbitmq
    assert rabbitmq is not None
    queue = run.stores.jobs_queue()
    leader = await run.call(rabbitmq.queue_leader, queue, 0)
    # Every process lists node 1 first, so it holds every connection; the job queue was
    # declared through it, so it leads the queue too.
    run.note(
        f"SIGKILL RabbitMQ node 1 of 3 (the job queue's leader: node "
        f"{None if leader is None else leader + 1}) with {run.load.streaming()} mid-stream"
    )
    run.begin_fault()
    await run.call(rabbitmq.kill_node, 0)
    run.end_fault()
    began = time.monotonic()
    for _ in range(20):
        new = await run.call(rabbitmq.queue_leader, queue, 1)
        if new is not None and new != 0:
            run.note(f"node {new + 1} leads the job queue {time.monotonic() - began:.1f} s later")
            return
        await run.sleep(0.5)
    run.note("no new leader of the job queue was reported")


RABBITMQ_NODE_KILLED = Scenario(
    Plan(
        "rabbitmq-node-kill-1-of-3",
        private_rabbitmq=True,
        rabbitmq_nodes=3,
        after_s=10,
        cost_s=85,
    ),
    _rabbitmq_node_killed,
)


@pytest.mark.chaos(RABBITMQ_NODE_KILLED)
def test_rabbitmq_node_killed(chaos: Scenarios) -> None:
    chaos.check(RABBITMQ_NODE_KILLED)


# -- (6) the workers' RabbitMQ connections blackholed for 20 s ----------------------------------

BLACKHOLE_S = 20.0


async def _workers_blackholed(run: Run) -> None:
    proxy = run.stores.proxy
    assert proxy is not None
    run.note(
        f"blackholed the workers' {proxy.connections} RabbitMQ connections for "
        f"{BLACKHOLE_S:.0f} s with {run.load.streaming()} mid-stream"
    )
    await run.call(proxy.blackhole)
    await run.sleep(BLACKHOLE_S)
    await run.call(proxy.restore)
    run.end_fault()


RABBITMQ_BLACKHOLED = Scenario(
    Plan(
        "rabbitmq-blackhole-workers-20s",
        private_rabbitmq=True,
        rabbitmq_proxy=("worker",),
        after_s=10,
        cost_s=75,
    ),
    _workers_blackholed,
)


@pytest.mark.chaos(RABBITMQ_BLACKHOLED)
def test_rabbitmq_blackholed_for_the_workers(chaos: Scenarios) -> None:
    chaos.check(RABBITMQ_BLACKHOLED)


# -- (7) a RabbitMQ memory alarm for 15 s -------------------------------------------------------

ALARM_S = 15.0
#: A send refused during the alarm is answered within the publish timeout (5 s) and some.
REFUSED_WITHIN_S = 10.0
#: After the alarm, long enough for a job that slipped through to be answered and stored.
STRAY_WAIT_S = 10.0


async def _memory_alarm(run: Run) -> None:
    rabbitmq = run.stores.rabbitmq
    assert rabbitmq is not None
    gateway = run.stack.gateway_urls[0]
    sid = await new_session(run.http, gateway)
    alarm_at = time.monotonic()
    # The broker raises (and clears) the alarm as it takes the new watermark, before the
    # command returns; the probe below shows it in force.
    await run.call(partial(rabbitmq.set_memory_alarm, 0, True, wait=False))
    run.note(f"memory alarm raised with {run.load.streaming()} mid-stream")
    probe = probe_turn(sid, "alarm")
    await run.load.post_once(probe, gateway)
    run.note(f"probe POST during the alarm: {probe.refusals or probe.reply_ids}")
    run.expect(not probe.accepted, "the probe was accepted during the memory alarm")
    run.expect(
        bool(probe.refusals) and probe.refusals[0].startswith("503"),
        f"the probe was refused with {probe.refusals[:1]}, not a 503",
    )
    await run.sleep(max(0.0, ALARM_S - (time.monotonic() - alarm_at)))
    await run.call(partial(rabbitmq.set_memory_alarm, 0, False, wait=False))
    run.end_fault()

    # Whatever the refused probe left behind shows once the broker takes publishes again.
    await run.sleep(STRAY_WAIT_S)
    rows = await rows_for_key(run.stores.store_url, probe.key)
    in_session = await rows_in_session(run.stores.store_url, sid)
    run.expect(
        not rows and not in_session,
        f"the probe refused during the alarm left {summary(rows)} under its key, and its "
        f"session holds {summary(in_session)} (ids {[m.id for m in in_session]})",
    )


def _alarm_refusals(run: Run, verdict: Verdict) -> None:
    refused = [t for t in run.load.turns if t.refusals and not t.accepted]
    refusals = [r for t in run.load.turns for r in t.refusals]
    slowest = max((s for t in run.load.turns for s in t.refused_after_s), default=0.0)
    run.note(
        f"{len(refused)} workload turns refused during the alarm (not sent again), "
        f"slowest refusal {slowest:.1f} s"
    )
    run.expect(bool(refused), "no workload turn was refused: the alarm tested nothing")
    others = sorted({r for r in refusals if not r.startswith("503")})
    run.expect(not others, f"refusals other than 503: {others}")
    run.expect(
        slowest <= REFUSED_WITHIN_S,
        f"a refusal took {slowest:.1f} s (more than {REFUSED_WITHIN_S:.0f} s)",
    )
    # A refused turn leaves nothing: no question, no reply.
    refused_keys = {t.key for t in refused}
    replies = {t.reply_id for t in run.load.turns if t.accepted}
    left = [m for m in run.stored if m.idempotency_key in refused_keys]
    stray = [m for m in run.stored if m.role == "assistant" and m.id not in replies]
    run.expect(not left, f"refused turns left {len(left)} messages: {summary(left[:5])}")
    run.expect(
        not stray,
        f"{len(stray)} stored replies belong to no accepted turn (the refused turns' jobs "
        f"ran after all): {[(m.id, m.status, len(m.content)) for m in stray[:4]]}",
    )
    for turn in run.load.turns:
        if turn.accepted and turn.reply_id is not None:
            outcome = verdict.outcome.get(turn.reply_id)
            run.expect(outcome == "complete", f"accepted turn ended {outcome}: {turn.describe()}")


MEMORY_ALARM = Scenario(
    Plan(
        "rabbitmq-memory-alarm-15s",
        private_rabbitmq=True,
        retry_refused=False,
        after_s=4,
        cost_s=70,
    ),
    _memory_alarm,
    _alarm_refusals,
)


@pytest.mark.chaos(MEMORY_ALARM)
def test_rabbitmq_memory_alarm(chaos: Scenarios) -> None:
    chaos.check(MEMORY_ALARM)


# -- (8) the Redis primary killed; Sentinel promotes the replica ---------------------------------


async def _redis_primary_killed(run: Run) -> None:
    sentinels = run.stores.sentinels
    assert sentinels is not None
    run.note(f"SIGKILL the Redis primary with {run.load.streaming()} mid-stream")
    run.begin_fault()
    killed_at = time.monotonic()
    await run.call(sentinels.kill_primary)
    await run.call(sentinels.wait_promoted, 30.0)
    run.note(f"Sentinel promoted the replica {time.monotonic() - killed_at:.1f} s after the kill")
    run.end_fault()


REDIS_FAILOVER = Scenario(
    Plan("redis-sentinel-failover", redis_sentinels=True, after_s=10, cost_s=60),
    _redis_primary_killed,
)


@pytest.mark.chaos(REDIS_FAILOVER)
def test_redis_primary_killed_sentinel_promotes(chaos: Scenarios) -> None:
    chaos.check(REDIS_FAILOVER)


# -- (15) the PostgreSQL primary killed; the standby promoted -----------------------------------


async def _postgres_primary_killed(run: Run) -> None:
    pair = run.stores.pair
    assert pair is not None
    run.note(f"SIGKILL the PostgreSQL primary with {run.load.streaming()} mid-stream")
    run.begin_fault()
    await run.call(pair.kill_primary)
    # The promotion is an operator's (or a failover manager's) act, not Axon's.
    await run.sleep(PROMOTE_AFTER_S)
    began = time.monotonic()
    await run.call(pair.promote_standby)
    run.note(
        f"standby promoted {PROMOTE_AFTER_S:.0f} s after the kill "
        f"(pg_ctl promote took {time.monotonic() - began:.1f} s)"
    )
    run.end_fault()


POSTGRES_FAILOVER = Scenario(
    Plan("postgres-failover-to-standby", postgres_standby=True, after_s=10, cost_s=65),
    _postgres_primary_killed,
)


@pytest.mark.chaos(POSTGRES_FAILOVER)
def test_postgres_primary_killed_standby_promoted(chaos: Scenarios) -> None:
    chaos.check(POSTGRES_FAILOVER)


# -- (20) a whole availability zone lost --------------------------------------------------------


async def _zone_lost(run: Run) -> None:
    """Every process of zone "a" is SIGKILLed at once: its gateway, session manager and
    worker, the Redis primary and one Sentinel, the PostgreSQL primary and one RabbitMQ node.
    Zone "b" is left with the replica and two Sentinels, the standby and two RabbitMQ nodes.
    Sentinel promotes the replica on its own; the PostgreSQL standby is promoted the way an
    operator or a failover manager would, ``PROMOTE_AFTER_S`` later. The load balancer
    stops sending clients to zone "a": the workload uses zone "b"'s gateway from then on,
    and the replies that were streaming through zone "a" re-attach through it."""
    zones, stack, rabbitmq = run.stores.zones, run.stack, run.stores.rabbitmq
    assert zones is not None
    assert rabbitmq is not None
    lost = [stack.gateways[0], stack.managers[0], stack.workers[0]]
    leader = await run.call(rabbitmq.queue_leader, run.stores.jobs_queue(), 1)
    kills: list[tuple[str, Callable[[], object]]] = [(m.name, partial(stack.kill, m)) for m in lost]
    kills += zones.datastore_kills("a")
    run.note(
        f"zone a lost with {run.load.streaming()} mid-stream (the job queue's leader was node "
        f"{None if leader is None else leader + 1}): SIGKILL {', '.join(n for n, _ in kills)}"
    )
    run.begin_fault()
    lost_at = time.monotonic()
    await asyncio.gather(*(run.call(kill) for _, kill in kills))
    run.note(f"every process of zone a was dead {time.monotonic() - lost_at:.2f} s later")
    for member in lost:
        stack.retire(member)
    run.load.gateways.remove(lost[0].url)

    async def promote_postgres() -> None:
        await run.sleep(PROMOTE_AFTER_S)
        assert run.stores.pair is not None
        await run.call(run.stores.pair.promote_standby)
        run.note(f"PostgreSQL standby promoted {time.monotonic() - lost_at:.1f} s after the loss")

    async def sentinel_failover() -> None:
        assert run.stores.sentinels is not None
        await run.call(run.stores.sentinels.wait_promoted, 30.0)
        run.note(f"Sentinel promoted the replica {time.monotonic() - lost_at:.1f} s after the loss")

    await asyncio.gather(promote_postgres(), sentinel_failover())
    run.end_fault()


def _zone_b_carried_on(run: Run, verdict: Verdict) -> None:
    moved = [t for t in run.load.turns if t.accepted and t.drops]
    run.note(f"{len(moved)} replies re-attached after a dropped stream")


ZONE_OUTAGE = Scenario(
    Plan(
        "zone-outage-a-of-2",
        zones=True,
        managers=2,
        workers=2,
        gateways=2,
        after_s=12,
        cost_s=120,
    ),
    _zone_lost,
    _zone_b_carried_on,
)


@pytest.mark.chaos(ZONE_OUTAGE)
def test_zone_outage(chaos: Scenarios) -> None:
    chaos.check(ZONE_OUTAGE)
