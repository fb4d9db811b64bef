"""Whether the stack is whole again: every process ready, a fresh turn answered, every
worker consuming the job queue; and the counters that tell what the stack did meanwhile."""

from __future__ import annotations

import asyncio
import time

import httpx

from .scenario import Run

#: Longest the stack may take to be whole again after the fault.
WHOLE_WITHIN_S = 180.0


async def whole_again(run: Run) -> float | None:
    """Seconds from the fault's end (once the scenario has said it ended) until every
    process is ready and a fresh turn, in a fresh session, succeeds."""
    while run.fault_ended_at is None:
        await run.sleep(0.1)
    deadline = run.fault_ended_at + WHOLE_WITHIN_S
    last = ""
    while time.monotonic() < deadline:
        ready = await run.stack.readiness(run.http)
        if all(status == 200 for status in ready.values()):
            probed = time.monotonic()
            outcome = await probe_turn(run.http, run.stack.gateway_urls[0])
            if outcome == "ok":
                took = time.monotonic() - run.fault_ended_at
                if took > 2.0:
                    turn_s = time.monotonic() - probed
                    run.note(
                        f"whole again after {took:.1f} s: the last wait was on "
                        f"{last or 'nothing'}; the fresh turn took {turn_s:.1f} s"
                    )
                return took
            last = f"fresh turn: {outcome}"
        else:
            last = f"not ready: { {k: v for k, v in ready.items() if v != 200} }"
        await asyncio.sleep(0.5)
    run.note(f"still not whole: {last}")
    return None


async def probe_turn(http: httpx.AsyncClient, gateway: str) -> str:
    """A short non-streamed turn in a new session: "ok" or what went wrong."""
    try:
        r = await http.post(f"{gateway}/v1/sessions", json={"title": "probe"}, timeout=10)
        if r.status_code != 201:
            return f"session {r.status_code}"
        sid = r.json()["id"]
        r = await http.post(
            f"{gateway}/v1/sessions/{sid}/messages",
            json={"content": "probe", "stream": False, "max_tokens": 4},
            timeout=30,
        )
        if r.status_code != 200:
            return f"turn {r.status_code} {r.text[:200]}"
        return "ok" if r.json()["message"]["status"] == "complete" else r.text[:200]
    except httpx.HTTPError as exc:
        return type(exc).__name__


#: Counters that tell what the stack did about a fault.
WATCHED = (
    "axon_jobs_published_total",
    "axon_jobs_finished_total",
    "axon_jobs_expired_in_queue_total",
    "axon_replies_stored_total",
    "axon_fenced_writes_total",
    "axon_lease_takeovers_total",
    "axon_errors_total",
    "axon_shed_total",
)


async def _counters(run: Run) -> list[str]:
    totals: dict[str, float] = {}
    for member in run.stack.members:
        try:
            text = (await run.http.get(f"{member.url}/metrics", timeout=5)).text
        except httpx.HTTPError:
            continue
        for sample in text.splitlines():
            if sample.startswith(WATCHED):
                name, _, value = sample.rpartition(" ")
                totals[name] = totals.get(name, 0.0) + float(value)
    return [f"{name} {value:g}" for name, value in sorted(totals.items()) if value]


async def final_state(run: Run) -> None:
    """Every process ready, and the job queue consumed by every worker again."""
    run.metrics = await _counters(run)
    ready = await run.stack.readiness(run.http)
    not_ready = {k: v for k, v in ready.items() if v != 200}
    run.expect(not not_ready, f"not ready at the end: {not_ready}")
    workers = len(run.stack.workers)
    consumers: int | None = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        consumers = await run.stores.queue_consumers()
        if consumers is not None and consumers >= workers:
            break
        await asyncio.sleep(1.0)
    run.expect(
        consumers is not None and consumers >= workers,
        f"job queue has {consumers} consumers for {workers} workers",
    )
