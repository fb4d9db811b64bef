"""Serving benchmark: time to first token and output tokens/s at several concurrencies.

Against a running server:
    python benchmarks/serving.py --url http://127.0.0.1:8000 --concurrency 1 8

Or compare, in one run and on the same model, the embedded stack (`axon serve`) with the
distributed one (`axon up`: gateway, session manager and worker processes on PostgreSQL,
Redis and RabbitMQ), which this script starts and stops itself:
    python benchmarks/serving.py --compare --engine llamacpp --concurrency 1 8

Each stream sends requests one after another to the OpenAI-compatible streaming endpoint
and records the time to the first content token and the output rate after it. Figures are
printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from report import pct, print_table

PROMPTS = [
    "Write a short paragraph about the ocean.",
    "Explain what a CPU does in simple words.",
    "Describe a walk in the forest.",
    "Give three tips for learning to cook.",
]


@dataclass
class Sample:
    ttft_s: float
    tokens: int
    duration_s: float

    @property
    def tokens_per_s(self) -> float:
        decode = self.duration_s - self.ttft_s
        return (self.tokens - 1) / decode if self.tokens > 1 and decode > 0 else 0.0


@dataclass
class Result:
    label: str
    concurrency: int
    samples: list[Sample] = field(default_factory=list)
    wall_s: float = 0.0
    errors: int = 0

    def row(self) -> dict[str, float | int | str]:
        ttft = [s.ttft_s * 1000 for s in self.samples]
        rate = [s.tokens_per_s for s in self.samples]
        total = sum(s.tokens for s in self.samples)
        return {
            "stack": self.label,
            "streams": self.concurrency,
            "requests": len(self.samples),
            "errors": self.errors,
            "ttft_p50_ms": round(pct(ttft, 0.5), 1),
            "ttft_p99_ms": round(pct(ttft, 0.99), 1),
            "stream_tok_s_p50": round(pct(rate, 0.5), 1),
            "stream_tok_s_p99": round(pct(rate, 0.01), 1),
            "total_tok_s": round(total / self.wall_s, 1) if self.wall_s else 0.0,
            "mean_tokens": round(statistics.mean([s.tokens for s in self.samples]), 1)
            if self.samples
            else 0,
        }


async def one_request(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int
) -> Sample:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    tokens = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(data["error"]["message"])
            if data.get("usage"):
                tokens = data["usage"]["completion_tokens"]
            elif not first and data["choices"] and data["choices"][0]["delta"].get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return Sample(ttft_s=(first or end) - started, tokens=tokens, duration_s=end - started)


async def run_level(
    url: str, label: str, concurrency: int, requests_per_stream: int, max_tokens: int
) -> Result:
    result = Result(label, concurrency)
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]
        # Warm up: load paths, caches and connections before measuring.
        await one_request(client, model, "Hello", 4)

        async def stream(index: int) -> None:
            for i in range(requests_per_stream):
                try:
                    prompt = PROMPTS[(index + i) % len(PROMPTS)]
                    result.samples.append(await one_request(client, model, prompt, max_tokens))
                except (httpx.HTTPError, RuntimeError):
                    result.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(stream(i) for i in range(concurrency)))
        result.wall_s = time.perf_counter() - started
    return result


def compare_summary(results: list[Result]) -> None:
    by = {(r.label, r.concurrency): r.row() for r in results}
    for (label, n), row in sorted(by.items()):
        if label != "distributed" or ("embedded", n) not in by:
            continue
        base = by[("embedded", n)]
        added50 = float(row["ttft_p50_ms"]) - float(base["ttft_p50_ms"])
        added99 = float(row["ttft_p99_ms"]) - float(base["ttft_p99_ms"])
        ratio = float(row["total_tok_s"]) / float(base["total_tok_s"] or 1)
        print(
            f"{n} streams: distributed adds TTFT p50 {added50:+.1f} ms, p99 {added99:+.1f} ms; "
            f"output tokens/s {ratio:.0%} of embedded"
        )


class Launched:
    """An ``axon`` command started by this script, stopped with SIGTERM."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "axon", *args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, url: str, timeout_s: float = 300) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"axon exited early; see {self.log.name}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("not ready in time")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


async def _cleanup(env: dict[str, str], model: str) -> None:
    """Drop what the distributed run left on the shared services (database, keys, queues)."""
    import aio_pika
    import redis.asyncio as redis
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    url = sa.make_url(env["AXON_STORE__URL"])
    admin = create_async_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
    await admin.dispose()
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = env["AXON_BACKENDS__REDIS_PREFIX"]
    keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()
    connection = await aio_pika.connect("amqp://guest:guest@127.0.0.1:5672/")
    async with connection:
        channel = await connection.channel()
        for kind in ("jobs", "dead"):
            await channel.queue_delete(f"{env['AXON_BACKENDS__RABBITMQ_PREFIX']}.{kind}.{model}")


def compare(args: argparse.Namespace) -> list[Result]:
    work = Path(tempfile.mkdtemp(prefix="axon-bench-"))
    tag = uuid.uuid4().hex[:8]
    env = {
        **os.environ,
        "AXON_DATA_DIR": str(work),
        "AXON_ENGINE__KIND": args.engine,
        "AXON_ENGINE__CAPACITY": str(max(args.concurrency)),
        "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": str(args.fake_speed),
        "AXON_ENGINE__FAKE_REPLY_TOKENS": str(args.max_tokens),
        "AXON_LOG__LEVEL": "WARNING",
    }
    results: list[Result] = []
    embedded_url = "http://127.0.0.1:18000"
    serve = Launched(["serve"], {**env, "AXON_SERVER__PORT": "18000"}, work / "serve.log")
    try:
        serve.wait_ready(embedded_url)
        for n in args.concurrency:
            results.append(
                asyncio.run(run_level(embedded_url, "embedded", n, args.requests, args.max_tokens))
            )
    finally:
        serve.stop()
    distributed_env = {
        **env,
        "AXON_STORE__URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/axon_bench_{tag}",
        "AXON_BACKENDS__REDIS_PREFIX": f"axon-bench-{tag}:",
        "AXON_BACKENDS__RABBITMQ_PREFIX": f"axon-bench-{tag}",
        # One worker holds the model, as in the embedded run: the comparison is the stack.
        "AXON_ENGINE__THREADS": "0",
    }
    up = Launched(
        [
            "up",
            "--gateways",
            "1",
            "--session-managers",
            "1",
            "--workers",
            "1",
            "--base-port",
            "18100",
        ],
        distributed_env,
        work / "up.log",
    )
    try:
        up.wait_ready("http://127.0.0.1:18100")
        for n in args.concurrency:
            results.append(
                asyncio.run(
                    run_level(
                        "http://127.0.0.1:18100", "distributed", n, args.requests, args.max_tokens
                    )
                )
            )
    finally:
        up.stop()
        asyncio.run(_cleanup(distributed_env, "smollm2-135m-instruct"))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="benchmark this running server")
    parser.add_argument("--compare", action="store_true", help="embedded vs distributed")
    parser.add_argument("--engine", default="llamacpp", choices=["llamacpp", "fake"])
    parser.add_argument("--fake-speed", type=float, default=200.0, help="fake engine tokens/s")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=4, help="requests per stream")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    if args.compare:
        results = compare(args)
    elif args.url:
        results = [
            asyncio.run(run_level(args.url, "server", n, args.requests, args.max_tokens))
            for n in args.concurrency
        ]
    else:
        parser.error("give --url or --compare")
    print_table([r.row() for r in results])
    compare_summary(results)


if __name__ == "__main__":
    main()
