"""What an operator sees of a chat turn: its stages measured, its outcome counted once, its
one log line (with timings and token counts, never its text), and open streams and
cancellations counted."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest

from axon.observability.metrics import REGISTRY
from axon.worker.engines.fake import FakeEngine
from support.cancel import cancel_when_running
from support.sse import parse


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _turn(client: httpx.AsyncClient, content: str, **body: object) -> list[object]:
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    r = await client.post(f"/v1/sessions/{sid}/messages", json={"content": content, **body})
    assert r.status_code == 200, r.text
    return list(parse(r.text))


async def test_a_turn_is_measured_counted_and_logged_once(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    model = "fake-model"
    before = {
        "ok": value("axon_turns_total", model=model, outcome="ok"),
        "admit": value("axon_turn_stage_duration_seconds_count", model=model, stage="admit"),
        "decode": value("axon_turn_stage_duration_seconds_count", model=model, stage="decode"),
        "store": value("axon_turn_stage_duration_seconds_count", model=model, stage="store"),
        "ttft": value("axon_turn_time_to_first_token_seconds_count", model=model),
        "wait": value("axon_job_queue_wait_seconds_count", model=model),
        "lag": value("axon_stream_relay_lag_seconds_count"),
        "generated": value("axon_generation_tokens_total", model=model),
        "prompt": value("axon_prompt_tokens_total", model=model),
        "misses": value("axon_cache_lookups_total", result="miss"),
        "stored": value(
            "axon_store_operation_duration_seconds_count", operation="add_user_message"
        ),
    }
    caplog.set_level(logging.INFO)
    events = await _turn(client, "a secret question about otters")
    done = events[-1]
    assert done.event == "done"  # type: ignore[attr-defined]
    usage = done.data["usage"]  # type: ignore[attr-defined]

    assert value("axon_turns_total", model=model, outcome="ok") == before["ok"] + 1
    for stage in ("admit", "decode", "store"):
        count = value("axon_turn_stage_duration_seconds_count", model=model, stage=stage)
        assert count == before[stage] + 1, stage
    assert value("axon_turn_time_to_first_token_seconds_count", model=model) == before["ttft"] + 1
    assert value("axon_job_queue_wait_seconds_count", model=model) == before["wait"] + 1
    # One lag sample per relayed entry: the token batches and the final event.
    assert value("axon_stream_relay_lag_seconds_count") >= before["lag"] + 2
    assert value("axon_generation_tokens_total", model=model) == before["generated"] + 12
    assert value("axon_prompt_tokens_total", model=model) > before["prompt"]
    assert value("axon_cache_lookups_total", result="miss") == before["misses"] + 1
    assert (
        value("axon_store_operation_duration_seconds_count", operation="add_user_message")
        == before["stored"] + 1
    )
    # The stream is closed: nothing is left counted as open.
    assert value("axon_open_client_streams") == 0

    finished = [r for r in caplog.records if r.getMessage() == "turn finished"]
    assert len(finished) == 1
    record = finished[0].__dict__
    assert record["outcome"] == "ok"
    assert record["completion_tokens"] == 12
    assert record["prompt_tokens"] > 0
    for stage in ("admit_s", "first_token_s", "total_s", "queue_wait_s", "prefill_s", "decode_s"):
        assert isinstance(record[stage], float), stage
        assert record[stage] >= 0, stage
    assert all("otters" not in str(v) for v in record.values())
    assert usage["completion_tokens"] == 12
    jobs = [r for r in caplog.records if r.getMessage() == "job finished"]
    assert len(jobs) == 1
    assert jobs[0].__dict__["completion_tokens"] == 12


async def test_a_cancelled_turn_counts_as_cancelled_by_the_client(
    client: httpx.AsyncClient, engine: FakeEngine
) -> None:
    engine.tokens_per_second = 50
    engine.reply_tokens = 500
    model = "fake-model"
    cancelled = value("axon_turns_total", model=model, outcome="cancelled")
    requested = value("axon_cancellations_total", cause="client_request")
    sid = (await client.post("/v1/sessions", json={})).json()["id"]

    canceller = asyncio.create_task(cancel_when_running(client, sid))
    body = {"content": "go on", "max_tokens": 400, "stream": False}
    r = await client.post(f"/v1/sessions/{sid}/messages", json=body)
    await canceller
    assert r.json()["finish_reason"] == "cancelled"
    assert value("axon_cancellations_total", cause="client_request") == requested + 1
    assert value("axon_turns_total", model=model, outcome="cancelled") == cancelled + 1
