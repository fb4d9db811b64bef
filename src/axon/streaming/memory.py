"""In-process token streams for the embedded default and unit tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from axon.core.types import Completion, StreamEvent
from axon.streaming.base import Claim, ClaimState, Entry, Fence, Fenced, TokenStreams, parse_id


@dataclass
class _Stream:
    entries: list[Entry] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    expires_at: float | None = None
    last: tuple[int, int] = (0, 0)


@dataclass
class _Lease:
    attempt: int = 0
    failures: int = 0
    open: bool = False
    final: bool = False
    offset: int = 0
    job: str = ""
    expires_at: float = 0.0


class MemoryTokenStreams(TokenStreams):
    def __init__(self, ttl_s: float = 600.0, maxlen: int = 10_000) -> None:
        self.ttl_s = ttl_s
        self.maxlen = maxlen
        self._streams: dict[str, _Stream] = {}
        self._leases: dict[str, _Lease] = {}
        self._cancelled: dict[str, float] = {}
        self._completions: list[tuple[str, Completion]] = []
        self._completion_seq = 0
        self._completions_changed = asyncio.Event()
        # group -> (next index to deliver, {id: (consumer, delivered_at)} pending)
        self._groups: dict[str, tuple[int, dict[str, tuple[str, float]]]] = {}
        #: A pending completion older than this is handed to another consumer.
        self.claim_after_s = 30.0

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, s in self._streams.items() if s.expires_at and s.expires_at < now]:
            del self._streams[key]
            self._leases.pop(key, None)
        for key in [k for k, t in self._cancelled.items() if t < now]:
            del self._cancelled[key]

    def _next_id(self, stream: _Stream) -> str:
        ms = int(time.time() * 1000)
        last_ms, last_seq = stream.last
        stream.last = (ms, 0) if ms > last_ms else (last_ms, last_seq + 1)
        return f"{stream.last[0]}-{stream.last[1]}"

    async def append(
        self,
        request_id: str,
        events: Sequence[StreamEvent],
        fence: Fence | None = None,
        completion: Completion | None = None,
    ) -> str:
        self._expire()
        lease = self._leases.setdefault(request_id, _Lease())
        final = any(event.final for event in events)
        if fence is not None and lease.attempt != fence.attempt:
            raise Fenced(request_id)
        if lease.final:
            return ""  # a reply has one final event: a late writer's is dropped
        if fence is not None:
            if not final and fence.offset < lease.offset:
                return ""
            if not final:
                lease.offset += sum(len(e.text.encode()) for e in events if not e.final)
        if final:
            lease.final, lease.open = True, False
        stream = self._streams.setdefault(request_id, _Stream())
        last = ""
        for event in events:
            last = self._next_id(stream)
            stream.entries.append((last, event))
            if event.final:
                stream.expires_at = time.monotonic() + self.ttl_s
        if completion is not None:
            await self.publish_completion(completion)
        del stream.entries[: max(0, len(stream.entries) - self.maxlen)]
        stream.changed.set()
        stream.changed = asyncio.Event()
        return last

    def _after(self, stream: _Stream, after: str | None) -> list[Entry]:
        if after is None:
            return list(stream.entries)
        pos = parse_id(after)
        return [e for e in stream.entries if parse_id(e[0]) > pos]

    async def read(
        self, request_id: str, after: str | None = None, *, timeout_s: float = 0.0
    ) -> list[Entry]:
        stream = self._streams.setdefault(request_id, _Stream())
        entries = self._after(stream, after)
        if entries or timeout_s <= 0:
            return entries
        try:
            async with asyncio.timeout(timeout_s):  # not wait_for: see read_completions
                await stream.changed.wait()
        except TimeoutError:
            return []
        return self._after(stream, after)

    async def claim(self, request_id: str, job: str, lease_s: float) -> Claim:
        lease = self._leases.setdefault(request_id, _Lease())
        now = time.monotonic()
        if lease.final:
            return Claim(ClaimState.FINISHED)
        if lease.open:
            if lease.expires_at > now:
                return Claim(ClaimState.BUSY, failures=lease.failures)
            lease.failures += 1
        lease.attempt += 1
        lease.open, lease.job, lease.expires_at = True, job, now + lease_s
        return Claim(ClaimState.OWNED, lease.attempt, lease.failures)

    async def renew(self, leases: Sequence[tuple[str, int]], lease_s: float) -> set[str]:
        fenced: set[str] = set()
        for request_id, attempt in leases:
            lease = self._leases.get(request_id)
            if lease is not None and lease.open and lease.attempt == attempt:
                lease.expires_at = time.monotonic() + lease_s
            else:
                fenced.add(request_id)
        return fenced

    async def release(self, request_id: str, attempt: int, *, failed: bool) -> None:
        lease = self._leases.get(request_id)
        if lease is None or not lease.open or lease.attempt != attempt:
            return
        lease.open = False
        lease.failures += int(failed)

    async def take_expired(self, limit: int = 32) -> list[str]:
        now = time.monotonic()
        jobs: list[str] = []
        for lease in self._leases.values():
            if len(jobs) >= limit:
                break
            if lease.open and lease.expires_at <= now:
                lease.attempt += 1
                lease.failures += 1
                lease.open = False
                jobs.append(lease.job)
        return jobs

    async def cancel(self, request_id: str) -> None:
        self._cancelled[request_id] = time.monotonic() + self.ttl_s

    async def is_cancelled(self, request_id: str) -> bool:
        return request_id in self._cancelled

    async def publish_completion(self, completion: Completion) -> None:
        self._completion_seq += 1
        self._completions.append((f"{self._completion_seq}-0", completion))
        self._completions_changed.set()
        self._completions_changed = asyncio.Event()

    async def read_completions(
        self, group: str, consumer: str, *, count: int = 32, timeout_s: float = 1.0
    ) -> list[tuple[str, Completion]]:
        index, pending = self._groups.setdefault(group, (0, {}))
        now = time.monotonic()
        out: list[tuple[str, Completion]] = []
        by_id = dict(self._completions)
        for cid, (_owner, at) in list(pending.items()):
            if now - at >= self.claim_after_s and len(out) < count:
                pending[cid] = (consumer, now)
                out.append((cid, by_id[cid]))
        if not out and index >= len(self._completions) and timeout_s > 0:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that arrives as the event fires, and the consumer would
                # then never stop.
                async with asyncio.timeout(timeout_s):
                    await self._completions_changed.wait()
            except TimeoutError:
                return []
            index, pending = self._groups[group]
        new = self._completions[index : index + count - len(out)]
        for cid, _ in new:
            pending[cid] = (consumer, time.monotonic())
        self._groups[group] = (index + len(new), pending)
        return out + new

    async def ack_completion(self, group: str, completion_id: str) -> None:
        _, pending = self._groups.get(group, (0, {}))
        pending.pop(completion_id, None)
