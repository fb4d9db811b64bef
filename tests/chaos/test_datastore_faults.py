"""A private datastore crashed or cut off under load: RabbitMQ, Redis (no replica) and
PostgreSQL. The fault ends when the datastore takes connections again; its own boot time is
not counted in "whole again"."""

from __future__ import annotations

import pytest

from chaos.harness.scenario import Plan, Run, Scenario
from chaos.harness.schedule import Scenarios

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

OUTAGE_S = 20.0
POSTGRES_OUTAGE_S = 60.0


# -- (5) the whole RabbitMQ down for 20 s, then restarted ------------------------------------


async def _rabbitmq_down(run: Run) -> None:
    rabbitmq = run.stores.rabbitmq
    assert rabbitmq is not None
    run.note(f"SIGKILL RabbitMQ with {run.load.streaming()} replies mid-stream")
    await run.call(rabbitmq.kill_node, 0)
    await run.sleep(OUTAGE_S)
    await run.call(rabbitmq.restart_node, 0)
    run.end_fault()


RABBITMQ_DOWN = Scenario(
    Plan("rabbitmq-down-20s", private_rabbitmq=True, after_s=10, cost_s=80), _rabbitmq_down
)


@pytest.mark.chaos(RABBITMQ_DOWN)
def test_rabbitmq_down_then_restarted(chaos: Scenarios) -> None:
    chaos.check(RABBITMQ_DOWN)


# -- (9) Redis down for 20 s (a crash, no replica), restarted from its append-only file ------


async def _redis_down(run: Run) -> None:
    redis = run.stores.redis
    assert redis is not None
    run.note(f"SIGKILL Redis with {run.load.streaming()} replies mid-stream")
    await run.call(redis.kill)
    await run.sleep(OUTAGE_S)
    await run.call(redis.restart)
    run.end_fault()


REDIS_DOWN = Scenario(
    Plan("redis-down-20s-no-replica", private_redis=True, after_s=10, cost_s=70), _redis_down
)


@pytest.mark.chaos(REDIS_DOWN)
def test_redis_down_without_replica(chaos: Scenarios) -> None:
    chaos.check(REDIS_DOWN)


# -- (10) every Redis client connection cut (the stream readers' among them) -----------------


async def _redis_clients_cut(run: Run) -> None:
    redis = run.stores.redis
    assert redis is not None
    for _ in range(3):
        cut = await run.call(redis.kill_clients)
        run.note(
            f"CLIENT KILL TYPE normal cut {cut} connections, {run.load.streaming()} mid-stream"
        )
        await run.sleep(3)
    run.end_fault()


REDIS_CLIENTS_CUT = Scenario(
    Plan("redis-client-kill", private_redis=True, cost_s=45), _redis_clients_cut
)


@pytest.mark.chaos(REDIS_CLIENTS_CUT)
def test_redis_connections_cut(chaos: Scenarios) -> None:
    chaos.check(REDIS_CLIENTS_CUT)


# -- (16) PostgreSQL down for 60 s -------------------------------------------------------------


async def _postgres_down(run: Run) -> None:
    postgres = run.stores.postgres
    assert postgres is not None
    run.note(f"SIGKILL PostgreSQL with {run.load.streaming()} replies mid-stream")
    await run.call(postgres.kill)
    await run.sleep(POSTGRES_OUTAGE_S)
    await run.call(postgres.restart)
    run.end_fault()


POSTGRES_DOWN = Scenario(
    Plan("postgres-down-60s", private_postgres=True, after_s=10, cost_s=130), _postgres_down
)


@pytest.mark.chaos(POSTGRES_DOWN)
def test_postgres_down_for_a_minute(chaos: Scenarios) -> None:
    chaos.check(POSTGRES_DOWN)
