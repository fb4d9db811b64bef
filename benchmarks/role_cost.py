"""Role cost benchmark: what one chat turn, one relayed token and one open stream cost each
process of `axon up`, and what a turn costs PostgreSQL, Redis and RabbitMQ. These are the
measured inputs of `benchmarks/capacity.py`.

Starts one gateway, one session manager and one worker (`fake` engine) on a Redis server
and a RabbitMQ node of its own (their CPU, memory and command counts are this run's
alone) and a database of its own on the local PostgreSQL, then:

1. Conversations through the session API (create a session, then turns one after another,
   each reply streamed) at ``--speed`` tokens/s per stream: 16 conversations with 64- and
   with 256-token replies, 64 conversations with 64-token replies; and the stateless
   OpenAI endpoint (`serving.run_level`) at 16 and 64 streams. Around each run it reads
   the CPU time (/proc) of every role process, of Redis, of the RabbitMQ node and of this
   database's PostgreSQL backends, less what each spends idle, and the deltas of Redis's
   command counts and of the database's commit and row counters. The two
   16-conversation runs give, by a two-point fit, the cost of a turn apart from that of
   its tokens.
2. Streams held open on a slow engine (1 token/s): the resident memory (RSS) of each role
   and Redis's memory and connections with 100, then 400 open streams.
3. The `fake` engine alone in this process, at the same speed, so that its own CPU can be
   taken out of the worker's.

    python benchmarks/role_cost.py                 # about four minutes
    python benchmarks/role_cost.py --speed 200     # the serving benchmark's stream speed

Everything is removed at the end (database, queues, the private Redis and RabbitMQ).
Figures are printed, never asserted; `python benchmarks/capacity.py --measure` prints them
as the constants that script plans with.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from capacity_inputs import Measured, RoleCost
from report import pct, print_table
from role_load import Drive, Held, converse, hold_streams, new_sessions
from role_samplers import Stored, machine, pg_cpu, stored
from role_stack import PrivateRabbitMQ, PrivateRedis, Stack
from serving import run_level

ROLES = ("gateway", "session-manager", "worker")
#: Per-stream speed of the published GPU figure capacity.py plans with (vLLM, Llama 3 8B,
#: one H100, about 14 ms per output token at 32 requests/s): the worker batches tokens
#: into stream entries by time (AXON_STREAM__BATCH_INTERVAL_MS), so the cost per token
#: depends on the speed of a stream.
PLAN_SPEED = 70.0
HELD = (100, 400)


# -- the measurements -----------------------------------------------------------------------


@dataclass
class Run:
    """One measured run: the load and what every part spent on it."""

    path: str
    streams: int
    max_tokens: int
    turns: int
    tokens: int
    errors: int
    wall_s: float
    ttft_p50_ms: float
    #: CPU seconds per role, idle spending taken out.
    cpu: dict[str, float]
    redis_commands: float
    redis_cpu_s: float
    pg_commits: float
    pg_rows_written: float
    pg_cpu_s: float
    rabbitmq_cpu_s: float
    #: Mean Redis memory of one finished reply's token stream and lease, bytes; and the
    #: stream's entries (the first token alone, batches, the final event).
    stream_bytes: float
    stream_entries: float

    def row(self) -> dict[str, object]:
        per_turn = max(self.turns, 1)
        row: dict[str, object] = {
            "path": self.path,
            "streams": self.streams,
            "reply": self.max_tokens,
            "turns": self.turns,
            "errors": self.errors,
            "tok/s": round(self.tokens / self.wall_s),
            "ttft_p50_ms": round(self.ttft_p50_ms),
        }
        for role in ROLES:
            row[f"{role} ms/turn"] = round(self.cpu[role] * 1000 / per_turn, 2)
            row[f"{role} s/1k tok"] = round(self.cpu[role] * 1000 / max(self.tokens, 1), 3)
        row.update(
            {
                "redis cmd/turn": round(self.redis_commands / per_turn, 1),
                "redis ms/turn": round(self.redis_cpu_s * 1000 / per_turn, 2),
                "pg commits/turn": round(self.pg_commits / per_turn, 2),
                "pg rows/turn": round(self.pg_rows_written / per_turn, 2),
                "pg ms/turn": round(self.pg_cpu_s * 1000 / per_turn, 2),
                "rabbitmq ms/turn": round(self.rabbitmq_cpu_s * 1000 / per_turn, 2),
                "stream B": round(self.stream_bytes),
                "entries/reply": round(self.stream_entries, 1),
            }
        )
        return row


def measure_runs(stack: Stack, turns: int) -> list[Run]:
    idle = stack.idle_rates()
    print("  idle CPU (cores): " + ", ".join(f"{k} {v:.3f}" for k, v in idle.items()), flush=True)
    runs: list[Run] = []
    plan = [("sessions", 16, 64), ("sessions", 16, 256), ("sessions", 64, 64)]
    plan += [("openai", 16, 64), ("openai", 64, 64)]
    for path, streams, max_tokens in plan:
        sessions: list[str] = []
        if path == "sessions":
            sessions = asyncio.run(new_sessions(stack.url, streams))
        time.sleep(1.0)
        before = stack.snapshot()
        if path == "sessions":
            drive = asyncio.run(converse(stack.url, sessions, turns, max_tokens))
        else:
            result = asyncio.run(run_level(stack.url, "openai", streams, turns, max_tokens))
            drive = Drive(
                turns=len(result.samples),
                tokens=sum(s.tokens for s in result.samples),
                errors=result.errors,
                ttft_s=[s.ttft_s for s in result.samples],
            )
        wall = time.monotonic() - before.at
        # Let the replies be stored and PostgreSQL publish its counters (every ~1 s).
        time.sleep(1.5)
        after = stack.snapshot()
        window = after.at - before.at
        stream_bytes, stream_entries = stack.streams_left(drive.replies)
        runs.append(
            Run(
                path=path,
                streams=streams,
                max_tokens=max_tokens,
                turns=drive.turns,
                tokens=drive.tokens,
                errors=drive.errors,
                wall_s=wall,
                ttft_p50_ms=pct(drive.ttft_s, 0.5) * 1000,
                cpu={r: max(0.0, after.cpu[r] - before.cpu[r] - idle[r] * window) for r in ROLES},
                redis_commands=after.redis["commands"] - before.redis["commands"],
                redis_cpu_s=max(
                    0.0, after.redis["cpu_s"] - before.redis["cpu_s"] - idle["redis"] * window
                ),
                pg_commits=after.pg["xact_commit"] - before.pg["xact_commit"],
                pg_rows_written=sum(
                    after.pg[k] - before.pg[k] for k in ("tup_inserted", "tup_updated")
                ),
                pg_cpu_s=pg_cpu(before.pg, after.pg),
                rabbitmq_cpu_s=max(
                    0.0, after.rabbitmq_cpu - before.rabbitmq_cpu - idle["rabbitmq"] * window
                ),
                stream_bytes=stream_bytes,
                stream_entries=stream_entries,
            )
        )
        print(f"  {path} {streams} streams, {max_tokens}-token replies: done", flush=True)
    return runs


def fake_engine_cpu(speed: float, streams: int = 16, tokens: int = 256) -> float:
    """CPU seconds per 1,000 tokens the `fake` engine spends on its own at ``speed``."""
    from axon.core.types import ChatMessage, SamplingParams
    from axon.worker.engines.fake import FakeEngine

    engine = FakeEngine(tokens_per_second=speed, reply_tokens=tokens)
    messages = [ChatMessage(role="user", content="Count.")]
    params = SamplingParams(max_tokens=tokens)

    async def one() -> int:
        return sum([c.tokens async for c in engine.generate(messages, params)])

    async def run() -> int:
        return sum(await asyncio.gather(*(one() for _ in range(streams))))

    started = time.process_time()
    produced = asyncio.run(run())
    return (time.process_time() - started) * 1000 / produced


# -- the figures ----------------------------------------------------------------------------


def fit(x1: float, y1: float, x2: float, y2: float) -> tuple[float, float]:
    """Intercept and slope of the line through two points (slope 0 if x1 == x2)."""
    slope = (y2 - y1) / (x2 - x1) if x2 != x1 else 0.0
    return y1 - slope * x1, slope


def figures_of(
    runs: list[Run], held: list[Held], store: Stored, fake: float, speed: float, command: str
) -> Measured:
    short, long = runs[0], runs[1]
    # Each run's cost per turn is a + b * (tokens per turn): two reply lengths give a, b.
    x1, x2 = short.tokens / short.turns, long.tokens / long.turns

    def per_turn(run: Run, value: float) -> float:
        return value / run.turns

    first, last = held[1], held[-1]
    opened = last.streams - first.streams
    costs: dict[str, RoleCost] = {}
    # Two points of noisy measurements can fit a slightly negative intercept: a cost
    # is never below zero.
    for role in ROLES:
        a, b = fit(x1, per_turn(short, short.cpu[role]), x2, per_turn(long, long.cpu[role]))
        costs[role] = RoleCost(
            cpu_ms_per_turn=round(max(0.0, a) * 1000, 3),
            cpu_s_per_1k_tokens=round(max(0.0, b) * 1000, 4),
            rss_mib_idle=round(held[0].rss_mib[role], 1),
            rss_kib_per_stream=round((last.rss_mib[role] - first.rss_mib[role]) * 1024 / opened, 1),
        )
    redis_a, redis_b = fit(
        x1, per_turn(short, short.redis_cpu_s), x2, per_turn(long, long.redis_cpu_s)
    )
    cmd_a, cmd_b = fit(
        x1, per_turn(short, short.redis_commands), x2, per_turn(long, long.redis_commands)
    )
    stream_a, stream_b = fit(x1, short.stream_bytes, x2, long.stream_bytes)
    # Tokens per stream entry of the batches (the first token and the final event aside).
    _, entries_per_token = fit(x1, short.stream_entries, x2, long.stream_entries)
    sessions = [r for r in runs if r.path == "sessions"]
    turns = sum(r.turns for r in sessions)
    return Measured(
        date=time.strftime("%Y-%m-%d"),
        machine=machine(),
        command=command,
        stream_tokens_per_s=speed,
        gateway=costs["gateway"],
        session_manager=costs["session-manager"],
        worker=costs["worker"],
        fake_engine_s_per_1k_tokens=round(fake, 4),
        tokens_per_entry=round(1 / entries_per_token, 2) if entries_per_token > 0 else 1.0,
        redis_cpu_ms_per_turn=round(max(0.0, redis_a) * 1000, 3),
        redis_cpu_s_per_1k_tokens=round(max(0.0, redis_b) * 1000, 4),
        redis_commands_per_turn=round(max(0.0, cmd_a), 1),
        redis_commands_per_1k_tokens=round(cmd_b * 1000, 1),
        redis_bytes_per_open_stream=round((last.redis_memory - first.redis_memory) / opened),
        redis_clients_per_open_stream=round((last.redis_clients - first.redis_clients) / opened, 2),
        redis_stream_bytes_fixed=round(max(0.0, stream_a)),
        redis_stream_bytes_per_token=round(stream_b, 1),
        redis_cache_bytes_per_message=round(
            store.cache_bytes / max(store.cache_messages, 1) - store.text_bytes
        ),
        redis_completion_bytes=round(
            store.completions_bytes / max(store.completions, 1) - store.reply_text_bytes
        ),
        pg_commits_per_turn=round(sum(r.pg_commits for r in sessions) / turns, 2),
        pg_rows_per_turn=round(sum(r.pg_rows_written for r in sessions) / turns, 2),
        pg_cpu_ms_per_turn=round(sum(r.pg_cpu_s for r in sessions) * 1000 / turns, 3),
        pg_bytes_per_message=round(store.pg_bytes / max(store.pg_rows, 1) - store.text_bytes),
        rabbitmq_cpu_ms_per_turn=round(sum(r.rabbitmq_cpu_s for r in sessions) * 1000 / turns, 3),
    )


def measure(speed: float = PLAN_SPEED, turns: int = 4, command: str = "") -> Measured:
    """Measure everything (printing each run); the figures capacity.py plans with."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is needed (apt-get install redis-server)")
    work = Path(tempfile.mkdtemp(prefix="axon-capacity-"))
    redis = PrivateRedis(work)
    try:
        rabbit = PrivateRabbitMQ(work)
    except BaseException:
        redis.stop()
        raise
    try:
        print(
            f"stacks on a private Redis (port {redis.port}) and RabbitMQ node {rabbit.node}; "
            f"logs in {work}",
            flush=True,
        )
        settings = {
            "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": str(speed),
            "AXON_ENGINE__FAKE_REPLY_TOKENS": "256",
            "AXON_ENGINE__CAPACITY": "128",
        }
        with Stack(work, redis, rabbit, settings) as stack:
            runs = measure_runs(stack, turns)
            store = stored(stack)
        print()
        print(f"== runs ({speed:g} tokens/s per stream; CPU idle spending taken out) ==")
        print_table([r.row() for r in runs])
        print()
        # Replies at 1 token/s stay open for the whole measurement.
        slow = {
            "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": "1",
            "AXON_ENGINE__FAKE_REPLY_TOKENS": "1000",
            "AXON_ENGINE__CAPACITY": str(max(HELD) + 64),
            "AXON_GATEWAY__UPSTREAM_POOL_SIZE": str(max(HELD) + 64),
        }
        with Stack(work, redis, rabbit, slow) as stack:
            held = asyncio.run(hold_streams(stack, HELD))
        fake = fake_engine_cpu(speed)
    finally:
        rabbit.stop()
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    command = command or "python benchmarks/role_cost.py"
    return figures_of(runs, held, store, fake, speed, command)


def report(figures: Measured) -> None:
    print()
    print("== per role (CPU fitted from 64- and 256-token replies; memory from held streams) ==")
    roles = {
        "gateway": figures.gateway,
        "session-manager": figures.session_manager,
        "worker": figures.worker,
    }
    print_table([{"role": role, **asdict(cost)} for role, cost in roles.items()])
    print()
    print("== datastores and the rest ==")
    rest = {k: v for k, v in asdict(figures).items() if not isinstance(v, dict)}
    print_table([{"figure": k, "value": v} for k, v in rest.items()])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--speed", type=float, default=PLAN_SPEED, help="tokens/s per stream")
    parser.add_argument("--turns", type=int, default=4, help="turns per conversation per run")
    args = parser.parse_args()
    command = "python benchmarks/role_cost.py" + (
        f" --speed {args.speed:g}" if args.speed != PLAN_SPEED else ""
    )
    report(measure(args.speed, args.turns, command))


if __name__ == "__main__":
    main()
