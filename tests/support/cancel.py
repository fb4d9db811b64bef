"""Cancel a session's first reply once it is running (in-process app tests, whose ASGI
client returns a response only when it is complete)."""

from __future__ import annotations

import asyncio

import httpx


async def cancel_when_running(client: httpx.AsyncClient, session_id: str) -> None:
    for _ in range(200):
        session = (await client.get(f"/v1/sessions/{session_id}")).json()
        if session["messages"]:
            reply_id = session["messages"][0]["reply_id"]
            await asyncio.sleep(0.2)
            r = await client.post(f"/v1/sessions/{session_id}/messages/{reply_id}/cancel")
            assert r.status_code == 202, r.text
            assert r.json()["cancelled"] is True, r.text
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the reply never started")
