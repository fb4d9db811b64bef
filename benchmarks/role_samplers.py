"""What the role cost benchmark (`benchmarks/role_cost.py`) reads: the CPU time and memory of
processes (/proc), the counters and backends' CPU of its PostgreSQL database, and what a run
left in Redis and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from burst import cpu_s

if TYPE_CHECKING:
    from role_stack import Stack


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` in MiB (0 when it is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


async def pg_figures(dsn: str, database: str) -> dict[str, float]:
    """This database's commit and row counters, size, and its backends' CPU seconds."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "select xact_commit, tup_inserted, tup_updated, tup_deleted, tup_fetched,"
            " pg_database_size(datname) as size from pg_stat_database where datname = $1",
            database,
        )
        pids = await conn.fetch(
            "select pid from pg_stat_activity where datname = $1 and pid <> pg_backend_pid()",
            database,
        )
    finally:
        await conn.close()
    out = {k: float(v) for k, v in dict(row or {}).items()}
    out.update({f"pid:{r['pid']}": cpu_s(r["pid"]) for r in pids})
    return out


@dataclass
class Snapshot:
    at: float
    cpu: dict[str, float]
    redis: dict[str, float]
    pg: dict[str, float]
    rabbitmq_cpu: float


def pg_cpu(before: dict[str, float], after: dict[str, float]) -> float:
    """CPU of the database's backends between two snapshots (new backends from zero)."""
    return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith("pid:"))


@dataclass
class Stored:
    """What the fast stack left in its stores, read before it stops."""

    #: Redis bytes of every cached session's keys, and the messages they hold.
    cache_bytes: float
    cache_messages: int
    #: Redis bytes of the completions log and its entries.
    completions_bytes: float
    completions: int
    #: axon_messages: rows, bytes (with indexes), mean text bytes of all and of replies.
    pg_rows: int
    pg_bytes: int
    text_bytes: float
    reply_text_bytes: float


def stored(stack: Stack) -> Stored:
    sizes = stack.redis.memory_of(f"{stack.prefix}session:*")
    messages = 0
    for key in sizes:
        if stack.redis.client.type(key) == b"hash":
            # One field per message, plus a marker that keeps an empty session cached.
            messages += max(0, int(stack.redis.client.hlen(key)) - 1)
    key = f"{stack.prefix}completions"
    pg = asyncio.run(message_table(stack.dsn))
    return Stored(
        cache_bytes=float(sum(sizes.values())),
        cache_messages=messages,
        completions_bytes=float(stack.redis.client.memory_usage(key, samples=0) or 0),
        completions=int(stack.redis.client.xlen(key)),
        pg_rows=int(pg["pg_rows"]),
        pg_bytes=int(pg["pg_bytes"]),
        text_bytes=pg["text_bytes"],
        reply_text_bytes=pg["reply_text_bytes"],
    )


async def message_table(dsn: str) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "select count(*) as pg_rows,"
            " pg_total_relation_size('axon_messages') as pg_bytes,"
            " coalesce(avg(octet_length(content)), 0) as text_bytes,"
            " coalesce(avg(octet_length(content)) filter (where role = 'assistant'), 0)"
            " as reply_text_bytes from axon_messages"
        )
    finally:
        await conn.close()
    return {k: float(v) for k, v in dict(row or {}).items()}
