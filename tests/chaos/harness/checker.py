"""After the fault is over and the stack has recovered: every accepted turn has exactly one
stored reply, and what its client saw is what was stored, token for token."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from .turns import Turn, expected_reply

#: How long stored replies may take to appear once the workload has stopped (a reply whose
#: client gave up is stored by a completion consumer, on its own time).
SETTLE_S = 30.0


@dataclass(frozen=True)
class Stored:
    id: str
    session_id: str
    role: str
    status: str
    content: str
    reply_id: str | None
    idempotency_key: str | None
    error_code: str | None


async def fetch(store_url: str, session_ids: list[str]) -> list[Stored]:
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.text(
                        "SELECT id, session_id, role, status, content, reply_id, "
                        "idempotency_key, error_code FROM axon_messages "
                        "WHERE session_id = ANY(:ids) ORDER BY pos"
                    ),
                    {"ids": session_ids},
                )
            ).all()
    finally:
        await engine.dispose()
    return [Stored(*row) for row in rows]


async def settle(store_url: str, turns: list[Turn], session_ids: list[str]) -> list[Stored]:
    """The stored messages, once every accepted turn has its reply (or ``SETTLE_S``)."""
    wanted = {t.reply_id for t in turns if t.accepted}
    deadline = time.monotonic() + SETTLE_S
    while True:
        try:
            stored = await fetch(store_url, session_ids)
        except Exception:
            if time.monotonic() > deadline:
                raise
            stored = []
        have = {m.id for m in stored if m.role == "assistant"}
        if wanted <= have or time.monotonic() > deadline:
            return stored
        await asyncio.sleep(1.0)


@dataclass
class Verdict:
    sent: int = 0
    accepted: int = 0
    complete: int = 0
    lost: int = 0
    duplicated: int = 0
    cut_short: int = 0
    mismatched: int = 0
    #: Accepted turns whose client never saw the end (it gave up re-attaching).
    stalled: int = 0
    #: Stored questions with no stored answer (the turn was never accepted).
    orphaned: int = 0
    #: Turns accepted only after a refused attempt (a retry with the same key).
    retried: int = 0
    #: What went wrong, one line per turn, for the failure message.
    findings: list[str] = field(default_factory=list)
    #: How each accepted turn ended: complete, cut, lost, ...
    outcome: dict[str, str] = field(default_factory=dict)

    def find(self, turn: Turn, what: str) -> None:
        self.findings.append(f"{what}: {turn.describe()}")


def _diff(a: str, b: str) -> str:
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    return f"client {len(a)} chars, stored {len(b)}, first difference at {at}: " + (
        f"client {a[max(0, at - 20) : at + 40]!r} / stored {b[max(0, at - 20) : at + 40]!r}"
    )


def check(turns: list[Turn], stored: list[Stored], reply_tokens: int) -> Verdict:
    v = Verdict(sent=len(turns))
    assistants = Counter(m.id for m in stored if m.role == "assistant")
    by_id = {m.id: m for m in stored if m.role == "assistant"}
    users_by_key = Counter(m.idempotency_key for m in stored if m.role == "user")
    users = [m for m in stored if m.role == "user"]
    for turn in turns:
        if users_by_key[turn.key] > 1:
            v.duplicated += 1
            v.find(turn, f"{users_by_key[turn.key]} user messages for one Idempotency-Key")
        if not turn.accepted:
            continue
        v.accepted += 1
        if any(r.startswith(("4", "5")) for r in turn.refusals):
            v.retried += 1
        key = turn.reply_id or ""
        v.outcome[key] = _classify(v, turn, assistants, by_id, reply_tokens)
    accepted_replies = {t.reply_id for t in turns if t.accepted}
    for user in users:
        if user.reply_id not in accepted_replies and assistants[user.reply_id or ""] == 0:
            v.orphaned += 1
            v.findings.append(
                f"orphaned: user message {user.id} (key {user.idempotency_key}, reply "
                f"{user.reply_id}) has no reply and its turn was never accepted"
            )
    return v


def _classify(
    v: Verdict, turn: Turn, assistants: Counter[str], by_id: dict[str, Stored], tokens: int
) -> str:
    reply_id = turn.reply_id or ""
    if len(set(turn.reply_ids)) > 1:
        v.duplicated += 1
        v.find(turn, f"one Idempotency-Key started several turns {sorted(set(turn.reply_ids))}")
        return "duplicated"
    if assistants[reply_id] == 0:
        v.lost += 1
        v.find(turn, "lost (accepted, no stored reply)")
        return "lost"
    if assistants[reply_id] > 1:
        v.duplicated += 1
        v.find(turn, f"{assistants[reply_id]} stored replies")
        return "duplicated"
    stored = by_id[reply_id]
    client = turn.client_text()
    expected = expected_reply(turn.content, tokens)
    if turn.repeated_ids:
        v.mismatched += 1
        v.find(turn, f"{turn.repeated_ids} token events repeated an earlier id")
        return "mismatched"
    if turn.final is None:
        v.stalled += 1
        v.find(turn, f"the client never saw the end (stored {stored.status})")
        return "stalled"
    if turn.final == "done":
        if stored.status != "complete":
            v.mismatched += 1
            v.find(turn, f"client got done, stored status {stored.status}")
            return "mismatched"
        if client != stored.content:
            v.mismatched += 1
            v.find(turn, "client text != stored text; " + _diff(client, stored.content))
            return "mismatched"
        if stored.content != expected:
            v.mismatched += 1
            v.find(turn, "stored text != the engine's reply; " + _diff(stored.content, expected))
            return "mismatched"
        v.complete += 1
        return "complete"
    # An error event that does not ask to re-attach: the reply was cut short.
    if stored.status == "complete":
        v.mismatched += 1
        v.find(turn, f"client got error {turn.error_code}, but the reply was stored complete")
        return "mismatched"
    if client != stored.content or not expected.startswith(stored.content):
        v.mismatched += 1
        v.find(
            turn, f"cut short inconsistently ({turn.error_code}); " + _diff(client, stored.content)
        )
        return "mismatched"
    v.cut_short += 1
    return "cut"
