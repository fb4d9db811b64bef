"""The workload: N conversations through the gateways, each sending streamed turns back to
back until told to stop. Every turn has its own Idempotency-Key; a POST refused before its
``turn`` event is sent again with the same key, and a stream that drops (or ends with an
``error`` event saying ``reattach``) is re-attached through another gateway with
``Last-Event-ID``. Each turn's record is what the checker compares with the store."""

from __future__ import annotations

import asyncio
import enum
import json
import random
import time
import uuid
from typing import Any

import httpx

from support.sse import parse

from .turns import Turn, event_position

#: Give up on a turn after this long without being accepted, or without any new event.
GIVE_UP_S = 90.0
#: Relays send a keep-alive every 10 s: a stream silent for longer is dead.
READ_TIMEOUT_S = 30.0
#: Answers worth another try: limited, overloaded, restarting, or a dead upstream.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
BACKOFF_FIRST_S = 0.25
BACKOFF_MAX_S = 2.0


class Ended(enum.Enum):
    FINAL = "final"  # done, or an error that ends the turn
    DROPPED = "dropped"  # ended early: send again (not accepted) or re-attach
    REFUSED = "refused"  # an answer worth another try
    FATAL = "fatal"  # an answer no retry can change


def _code(body: bytes) -> str:
    """The error code of a refusal's JSON body, if it has one."""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        return ""
    return str(error.get("code")) if isinstance(error, dict) else ""


def _asks_reattach(data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    error = data.get("error")
    nested = isinstance(error, dict) and error.get("reattach") is True
    return data.get("reattach") is True or nested


class Workload:
    def __init__(
        self,
        gateways: list[str],
        conversations: int,
        *,
        poison_marker: str | None = None,
        poison_every: int = 0,
        drop_after_tokens: tuple[int, int] | None = None,
        retry_refused: bool = True,
    ) -> None:
        #: Where turns are sent and re-attached; a scenario may take one out (a lost zone,
        #: as a load balancer would).
        self.gateways = list(gateways)
        self.conversations = conversations
        self.poison_marker = poison_marker
        self.poison_every = poison_every
        self.drop_after_tokens = drop_after_tokens
        self.retry_refused = retry_refused
        self.turns: list[Turn] = []
        self.session_ids: list[str] = []
        self.session_errors: list[str] = []
        self._stop = asyncio.Event()
        self._random = random.Random(7)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(READ_TIMEOUT_S, connect=5.0),
            limits=httpx.Limits(max_connections=4 * conversations + 20),
        )

    async def close(self) -> None:
        await self.http.aclose()

    def stop(self) -> None:
        """Each conversation ends after the turn it is on (followed to its end)."""
        self._stop.set()

    async def run(self) -> None:
        await asyncio.gather(*(self._conversation(c) for c in range(self.conversations)))

    def streaming(self) -> int:
        return sum(1 for t in self.turns if t.streaming)

    async def wait_streaming(self, count: int, within_s: float = 30.0) -> int:
        """Wait until ``count`` replies are mid-stream (at most ``within_s``); returns how
        many are."""
        for _ in range(int(within_s / 0.05)):
            if self.streaming() >= count:
                break
            await asyncio.sleep(0.05)
        return self.streaming()

    # -- conversations ------------------------------------------------------------------

    async def _conversation(self, c: int) -> None:
        sid = await self._create_session(c)
        if sid is None:
            return
        index = 0
        while not self._stop.is_set():
            poison = bool(self.poison_every) and index % self.poison_every == self.poison_every - 1
            key = uuid.uuid4().hex
            content = f"conversation {c} turn {index} {key[:8]}"
            if poison:
                content += f" {self.poison_marker}"
            turn = Turn(c, index, sid, key, content, poison)
            self.turns.append(turn)
            await self.send(turn)
            index += 1
            if not turn.accepted:
                await asyncio.sleep(BACKOFF_MAX_S)

    async def _create_session(self, c: int) -> str | None:
        started = time.monotonic()
        attempt = 0
        while time.monotonic() - started < GIVE_UP_S:
            gateway = self.gateways[(c + attempt) % len(self.gateways)]
            attempt += 1
            try:
                r = await self.http.post(f"{gateway}/v1/sessions", json={"title": f"chaos {c}"})
                if r.status_code == 201:
                    sid: str = r.json()["id"]
                    self.session_ids.append(sid)
                    return sid
                self.session_errors.append(f"{r.status_code} {_code(r.content)}")
            except httpx.HTTPError as exc:
                self.session_errors.append(type(exc).__name__)
            await asyncio.sleep(1.0)
        return None

    # -- one turn -----------------------------------------------------------------------

    async def send(self, turn: Turn) -> None:
        """Send ``turn`` (again with its key while refused, for up to ``GIVE_UP_S``) and
        follow its reply to the end, re-attaching whenever its stream drops."""
        delay = BACKOFF_FIRST_S
        gateway = 0
        drop_at = None
        if self.drop_after_tokens is not None:
            drop_at = self._random.randint(*self.drop_after_tokens)
        while True:
            gateway = (turn.conversation + turn.index + turn.attempts) % len(self.gateways)
            turn.attempts += 1
            ended = await self.post_once(turn, self.gateways[gateway], drop_at)
            if ended is Ended.FINAL:
                return
            if turn.accepted:
                break
            if ended is Ended.FATAL:
                turn.gave_up = "refused for good"
                return
            if ended is Ended.REFUSED and not self.retry_refused:
                # An answer, not a lost connection: the turn was refused, and stays so.
                turn.gave_up = f"refused ({turn.refusals[-1]})"
                return
            if time.monotonic() - turn.sent_at > GIVE_UP_S:
                turn.gave_up = f"not accepted in {GIVE_UP_S:.0f} s"
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX_S)
        await self._reattach(turn, gateway)

    async def post_once(self, turn: Turn, gateway: str, drop_at: int | None = None) -> Ended:
        """One POST of ``turn``, read until its stream ends (or the client drops it after
        ``drop_at`` tokens)."""
        url = f"{gateway}/v1/sessions/{turn.session_id}/messages"
        body = {"content": turn.content, "stream": True}
        posted = time.monotonic()
        try:
            async with self.http.stream(
                "POST", url, json=body, headers={"Idempotency-Key": turn.key}
            ) as r:
                if r.status_code != 200:
                    turn.refusals.append(f"{r.status_code} {_code(await r.aread())}")
                    turn.refused_after_s.append(time.monotonic() - posted)
                    return Ended.REFUSED if r.status_code in RETRY_STATUSES else Ended.FATAL
                ended = await self._follow(turn, r, drop_at)
        except httpx.TransportError as exc:
            (turn.drops if turn.accepted else turn.refusals).append(type(exc).__name__)
            return Ended.DROPPED
        if ended is Ended.DROPPED and not turn.accepted:
            turn.refusals.append("stream ended before the turn event")
        return ended

    async def _reattach(self, turn: Turn, gateway: int) -> None:
        delay = BACKOFF_FIRST_S
        progress_at = time.monotonic()
        while time.monotonic() - progress_at < GIVE_UP_S:
            await asyncio.sleep(delay)
            # Another gateway each time: the one the stream came through may be the fault.
            gateway = (gateway + 1) % len(self.gateways)
            turn.reattaches += 1
            before = len(turn.texts)
            last = turn.last_event_id
            headers = {"Last-Event-ID": last} if last else {}
            url = (
                f"{self.gateways[gateway]}/v1/sessions/{turn.session_id}"
                f"/messages/{turn.reply_id}/stream"
            )
            try:
                async with self.http.stream("GET", url, headers=headers) as r:
                    if r.status_code != 200:
                        turn.drops.append(f"re-attach {r.status_code} {_code(await r.aread())}")
                        if r.status_code not in RETRY_STATUSES:
                            turn.gave_up = "re-attach refused for good"
                            return
                    elif await self._follow(turn, r, None) is Ended.FINAL:
                        return
            except httpx.TransportError as exc:
                turn.drops.append(type(exc).__name__)
            if len(turn.texts) > before:
                progress_at, delay = time.monotonic(), BACKOFF_FIRST_S
            else:
                delay = min(delay * 2, BACKOFF_MAX_S)
        turn.gave_up = f"no new event in {GIVE_UP_S:.0f} s of re-attaching"

    async def _follow(self, turn: Turn, r: httpx.Response, drop_at: int | None) -> Ended:
        """Read one response's events into ``turn``. A transport error mid-body is raised
        to the caller like any other drop."""
        buffer = ""
        async for chunk in r.aiter_text():
            buffer += chunk.replace("\r\n", "\n")
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                for event in parse(block + "\n\n"):
                    ended = self._event(turn, event.event, event.id, event.data)
                    if ended is not None:
                        return ended
                if drop_at is not None and len(turn.texts) >= drop_at:
                    # The client itself goes away mid-reply (the scenario's fault).
                    turn.drops.append("client dropped the stream")
                    return Ended.DROPPED
        turn.drops.append("stream ended without a final event")
        return Ended.DROPPED

    def _event(self, turn: Turn, name: str, event_id: str | None, data: Any) -> Ended | None:
        now = time.monotonic()
        if name == "turn":
            turn.reply_ids.append(str(data["reply_id"]))
            turn.user_message_ids.append(str(data["user_message"]["id"]))
            if turn.accepted_at is None:
                turn.accepted_at = turn.last_event_at = now
            return None
        turn.saw(now)
        if event_id is not None:
            last = turn.last_event_id
            if last is not None and event_position(event_id) <= event_position(last):
                turn.repeated_ids += 1
        if name == "token":
            turn.texts.append(str(data["text"]))
            if event_id is not None:
                turn.event_ids.append(event_id)
            return None
        if name == "error" and _asks_reattach(data):
            turn.drops.append(f"error event asking to re-attach: {data}")
            return Ended.DROPPED
        if name in ("done", "error"):
            turn.final, turn.final_id, turn.final_data = name, event_id, data
            return Ended.FINAL
        return None
