"""When the queue cannot take a job, the request fails fast with a 503 and Retry-After, and
the conversation keeps no trace of the refused turn: the user's message is never left
waiting for a reply that will not come, and a client that retries asks its question once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx

from axon.core.errors import QueueUnavailable
from axon.core.types import Job
from axon.gateway.services import Services
from axon.queue.base import Delivery, JobQueue


class DownQueue(JobQueue):
    async def depth(self, model: str) -> int:
        raise QueueUnavailable("the job queue cannot be reached")

    async def consumers(self, model: str) -> int:
        raise QueueUnavailable("the job queue cannot be reached")

    async def publish(self, job: Job) -> None:
        raise QueueUnavailable("the job queue did not confirm the job in time")

    async def consume(self, model: str, prefetch: int) -> AsyncIterator[Delivery]:
        raise NotImplementedError
        yield

    async def dead_letters(self, model: str) -> AsyncIterator[Delivery]:
        raise NotImplementedError
        yield


async def test_queue_down_gives_503_and_leaves_nothing_in_the_conversation(
    client: httpx.AsyncClient, services: Services
) -> None:
    working = services.manager._queue
    services.manager._queue = DownQueue()  # the broker goes down under a running app
    sid = (await client.post("/v1/sessions", json={})).json()["id"]
    send = {"content": "hello", "stream": False}
    key = {"Idempotency-Key": "turn-1"}
    r = await client.post(f"/v1/sessions/{sid}/messages", json=send, headers=key)
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "1"
    assert r.json()["error"]["code"] == "queue_unavailable"
    assert (await client.get(f"/v1/sessions/{sid}")).json()["messages"] == []
    assert await services.manager._store.unpublished(0) == []
    r = await client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 503

    # The broker is back: the retry with the same key is answered, once.
    services.manager._queue = working
    r = await client.post(f"/v1/sessions/{sid}/messages", json=send, headers=key)
    assert r.status_code == 200
    messages = (await client.get(f"/v1/sessions/{sid}")).json()["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"),
        ("assistant", "complete"),
    ]
