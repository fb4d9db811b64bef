"""The load of the role cost benchmark (`benchmarks/role_cost.py`): conversations through
the session API, each reply streamed to its end, and streams held open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from role_samplers import rss_mib
from role_stack import Stack
from serving import PROMPTS


@dataclass
class Drive:
    """What one run of conversations did."""

    turns: int = 0
    tokens: int = 0
    errors: int = 0
    ttft_s: list[float] = field(default_factory=list)
    #: Ids of the replies, to find their token streams in Redis.
    replies: list[str] = field(default_factory=list)


async def create_sessions(client: httpx.AsyncClient, n: int) -> list[str]:
    async def one(i: int) -> str:
        r = await client.post("/v1/sessions", json={"title": f"capacity {i}"})
        r.raise_for_status()
        return str(r.json()["id"])

    return list(await asyncio.gather(*(one(i) for i in range(n))))


async def turn(
    client: httpx.AsyncClient, session: str, content: str, max_tokens: int, out: Drive
) -> None:
    """One turn through the session API, its reply read to the end (``done``)."""
    started = time.perf_counter()
    event = ""
    first = True
    body = {"content": content, "max_tokens": max_tokens}
    async with client.stream("POST", f"/v1/sessions/{session}/messages", json=body) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
                if event == "turn":
                    out.replies.append(data["reply_id"])
                elif event == "token" and first:
                    out.ttft_s.append(time.perf_counter() - started)
                    first = False
                elif event == "done":
                    out.tokens += data["usage"]["completion_tokens"]
                    out.turns += 1
                    return
                elif "error" in data:
                    raise RuntimeError(data["error"].get("message"))
    raise RuntimeError("the stream ended without done")


async def conversations(
    client: httpx.AsyncClient, sessions: list[str], turns: int, max_tokens: int
) -> Drive:
    out = Drive()

    async def talk(i: int, session: str) -> None:
        for t in range(turns):
            try:
                await turn(client, session, PROMPTS[(i + t) % len(PROMPTS)], max_tokens, out)
            except (httpx.HTTPError, RuntimeError):
                out.errors += 1

    await asyncio.gather(*(talk(i, s) for i, s in enumerate(sessions)))
    return out


def client_for(url: str, streams: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=streams + 8, max_keepalive_connections=streams + 8)
    return httpx.AsyncClient(base_url=url, timeout=120, limits=limits)


async def new_sessions(url: str, n: int) -> list[str]:
    async with client_for(url, n) as client:
        return await create_sessions(client, n)


async def converse(url: str, sessions: list[str], turns: int, max_tokens: int) -> Drive:
    async with client_for(url, len(sessions)) as client:
        return await conversations(client, sessions, turns, max_tokens)


@dataclass
class Held:
    streams: int
    rss_mib: dict[str, float]
    redis_memory: float
    redis_clients: float


async def hold_streams(stack: Stack, levels: tuple[int, ...]) -> list[Held]:
    """Open streams in steps up to each of ``levels``, each on a session of its own, and
    read every role's RSS and Redis's memory and connections once each stream of the step
    has its first token or has failed (replies run at 1 token/s, so they stay open).
    ``Held.streams`` counts the streams actually open."""
    samples: list[Held] = []
    most = max(levels)
    failures: Counter[str] = Counter()
    async with client_for(stack.url, most) as client:

        def sample(streams: int) -> None:
            info = stack.redis.info()
            rss = {r: rss_mib(p) for r, p in stack.pids.items()}
            samples.append(Held(streams, rss, info["used_memory"], info["connected_clients"]))

        sample(0)
        sessions = await create_sessions(client, most)
        # Set at a stream's first token, or when it ends without one.
        settled: list[asyncio.Event] = []
        opened: set[int] = set()
        tasks: list[asyncio.Task[None]] = []

        async def hold(index: int) -> None:
            body = {"content": "Hold this stream open.", "max_tokens": 900}
            path = f"/v1/sessions/{sessions[index]}/messages"
            try:
                async with client.stream("POST", path, json=body) as r:
                    if r.status_code != 200:
                        failures[f"HTTP {r.status_code}"] += 1
                        return
                    async for line in r.aiter_lines():
                        if line.startswith("event: token"):
                            opened.add(index)
                            settled[index].set()
                        elif line.startswith("event: error"):
                            failures["error event"] += 1
                            return
            except httpx.HTTPError as exc:
                failures[type(exc).__name__] += 1
            finally:
                opened.discard(index)
                settled[index].set()

        for level in levels:
            while len(tasks) < level:
                settled.append(asyncio.Event())
                tasks.append(asyncio.create_task(hold(len(tasks))))
                await asyncio.sleep(0.01)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(e.wait() for e in settled)), 60)
            await asyncio.sleep(3.0)
            sample(len(opened))
            print(f"  {len(opened)} of {level} streams open", flush=True)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if failures:
        print(f"  streams that failed to open: {dict(failures)} (see {stack.log})")
    return samples
