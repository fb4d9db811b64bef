"""The same job delivered twice, a POST retried with its Idempotency-Key after a refusal, and
a crash between storing a user message and publishing its job. Each runs on a private
RabbitMQ (the firehose tracer and the broker's pause must not touch the shared one)."""

from __future__ import annotations

import asyncio
import time

import pytest

from chaos.harness.checker import Verdict
from chaos.harness.firehose import Firehose
from chaos.harness.probes import (
    again,
    new_session,
    probe_turn,
    rows_for_key,
    summary,
    wait_user_row,
)
from chaos.harness.scenario import Plan, Run, Scenario
from chaos.harness.schedule import Scenarios

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


# -- (17) the same job delivered twice ---------------------------------------------------------

#: Copies published while their reply streams, and after it finished.
MID_STREAM_COPIES = 8
LATE_COPIES = 3


async def _duplicate_jobs(run: Run) -> None:
    rabbitmq = run.stores.rabbitmq
    assert rabbitmq is not None
    hose = Firehose(rabbitmq, run.stores.jobs_queue())
    await hose.start()
    mid: set[str] = set()
    late: set[str] = set()
    deadline = time.monotonic() + 20
    try:
        while time.monotonic() < deadline and (
            len(mid) < MID_STREAM_COPIES or len(late) < LATE_COPIES
        ):
            for turn in list(run.load.turns):
                rid = turn.reply_id
                if rid is None or rid in mid or rid in late or rid not in hose.jobs:
                    continue
                if turn.final is None and len(turn.texts) >= 3 and len(mid) < MID_STREAM_COPIES:
                    copies = mid
                elif turn.final == "done" and len(late) < LATE_COPIES:
                    copies = late
                else:
                    continue
                if await hose.publish_again(rid):
                    copies.add(rid)
            await run.sleep(0.1)
    finally:
        await hose.close()
    run.note(f"published again: {len(mid)} jobs mid-stream, {len(late)} after they finished")
    run.expect(len(mid) >= 3, f"only {len(mid)} jobs were copied mid-stream: too few to tell")


DUPLICATE_JOB = Scenario(
    Plan("duplicate-job-delivery", private_rabbitmq=True, cost_s=60), _duplicate_jobs
)


@pytest.mark.chaos(DUPLICATE_JOB)
def test_same_job_delivered_twice(chaos: Scenarios) -> None:
    chaos.check(DUPLICATE_JOB)


# -- (18) a POST retried with the same Idempotency-Key after a refusal ---------------------------

REFUSAL_S = 15.0


async def _retry_after_refusal(run: Run) -> None:
    rabbitmq = run.stores.rabbitmq
    assert rabbitmq is not None
    gateway = run.stack.gateway_urls[0]
    sid = await new_session(run.http, gateway)
    first = probe_turn(sid, "refused")
    await run.call(rabbitmq.stop_app, 0)
    await run.sleep(1)
    await run.load.post_once(first, gateway)
    run.note(f"probe POST while RabbitMQ is stopped: {first.refusals or first.reply_ids}")
    run.expect(not first.accepted, "the probe was accepted while RabbitMQ was stopped")
    await run.sleep(REFUSAL_S)
    await run.call(rabbitmq.start_app, 0)
    run.end_fault()

    second = again(first)
    await run.load.send(second)
    run.note(f"retry with the same key: {second.describe()}")
    run.expect(second.accepted, "the retry with the same key was never accepted")
    run.expect(
        second.final == "done",
        f"the retry with the same key ended {second.final}/{second.error_code}, not done: "
        "the refused attempt must not decide the turn's fate",
    )
    third = again(first)
    await run.load.send(third)
    run.expect(
        third.reply_ids[:1] == second.reply_ids[:1]
        and third.user_message_ids[:1] == second.user_message_ids[:1],
        f"a second retry with the same key got another turn: {second.reply_ids} then "
        f"{third.reply_ids}",
    )
    rows = await rows_for_key(run.stores.store_url, first.key)
    run.note(f"stored for the probe's key: {summary(rows)}")
    users = [r for r in rows if r.role == "user"]
    replies = [r for r in rows if r.role == "assistant"]
    run.expect(len(users) == 1, f"{len(users)} user messages for one Idempotency-Key")
    run.expect(
        len(replies) == 1 and replies[0].status == "complete",
        f"the probe's stored replies: {summary(replies)}",
    )


def _retries_seen(run: Run, verdict: Verdict) -> None:
    run.note(f"{verdict.retried} workload turns were accepted only after a refusal")


RETRY_AFTER_REFUSAL = Scenario(
    Plan("idempotent-retry-after-503", private_rabbitmq=True, cost_s=70),
    _retry_after_refusal,
    _retries_seen,
)


@pytest.mark.chaos(RETRY_AFTER_REFUSAL)
def test_post_retried_with_the_same_key_after_a_refusal(chaos: Scenarios) -> None:
    chaos.check(RETRY_AFTER_REFUSAL)


# -- (19) a crash between storing a user message and publishing its job --------------------------


async def _crash_before_publish(run: Run) -> None:
    """The broker is paused (SIGSTOP), so a publish hangs until its timeout; a turn sent
    then has its user message stored and its job not yet published. The moment that row
    is committed, every session manager is killed: no process is left that could still
    publish the job or record its failure."""
    rabbitmq = run.stores.rabbitmq
    assert rabbitmq is not None
    gateway = run.stack.gateway_urls[0]
    sid = await new_session(run.http, gateway)
    first = probe_turn(sid, "crash")
    await run.call(rabbitmq.pause_node, 0)
    try:
        posting = asyncio.create_task(run.load.post_once(first, gateway))
        row = await wait_user_row(run.stores.store_url, first.key, within_s=15)
        run.expect(row is not None, "the probe's user message was never stored")
        for manager in run.stack.managers:
            await run.call(run.stack.kill, manager)
        run.note(f"killed every session manager with the probe's message stored ({row})")
    finally:
        await run.call(rabbitmq.resume_node, 0)
    run.end_fault()
    for manager in run.stack.managers:
        await run.restart(manager)
    await posting
    run.note(f"the probe's POST: {first.refusals or first.reply_ids}")

    retry = again(first)
    await run.load.send(retry)
    run.note(f"retry with the same key: {retry.describe()}")
    run.expect(retry.accepted, "the retry with the same key was never accepted")
    if row is not None:
        run.expect(
            retry.reply_id == row.reply_id,
            f"the retry got reply {retry.reply_id}, the stored message asked for {row.reply_id}",
        )
    run.expect(
        retry.final == "done",
        f"the retry ended {retry.final}/{retry.error_code} (gave up: {retry.gave_up}): the "
        "stored question's job was never published",
    )
    rows = await rows_for_key(run.stores.store_url, first.key)
    run.note(f"stored for the probe's key: {summary(rows)}")
    users = [r for r in rows if r.role == "user"]
    replies = [r for r in rows if r.role == "assistant"]
    run.expect(len(users) == 1, f"{len(users)} user messages for one Idempotency-Key")
    run.expect(
        len(replies) == 1 and replies[0].status == "complete",
        f"the probe's stored replies: {summary(replies)}",
    )


CRASH_BEFORE_PUBLISH = Scenario(
    Plan("crash-between-store-and-publish", private_rabbitmq=True, cost_s=110),
    _crash_before_publish,
)


@pytest.mark.chaos(CRASH_BEFORE_PUBLISH)
def test_crash_between_storing_and_publishing(chaos: Scenarios) -> None:
    chaos.check(CRASH_BEFORE_PUBLISH)
