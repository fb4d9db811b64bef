"""Engine benchmark, in one run on the bundled model: output tokens/s, time to first token
(TTFT) and inter-token latency (ITL) at several concurrencies for three stacks:

  raw               llama.cpp's batch API in a tight loop (N sequences decoding together,
                    no serving layer): the ceiling for this machine and model;
  axon              `axon serve` with the batching llamacpp engine, over HTTP;
  llama-cpp-python  its own server (`python -m llama_cpp.server`), requests queued.

Each of N streams sends requests one after another (same prompts, temperature 0, same
max_tokens everywhere). Then TTFT per turn of a 5-turn conversation, with and without
prefix reuse (in-process engine). Prints tables and writes a PNG chart (``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from axon.core.types import ChatMessage, SamplingParams
from axon.models.gguf import GgufTokenizer, default_model_path
from report import pct, print_table

PROMPTS = [
    f"Write a long story about {topic}."
    for topic in ("a dragon and a knight", "a lighthouse keeper", "a robot who paints", "a desert")
]
QUESTIONS = [
    "Tell me about the history of bread.", "How did people bake it in ancient Egypt?",
    "And in medieval Europe?", "What changed with industrial baking?",
    "Which bread should I bake first at home?",
]  # fmt: skip
CONTEXT = 2048  # per sequence, in every stack


def ask(text: str) -> ChatMessage:
    return ChatMessage(role="user", content=text)


@dataclass
class Level:
    """One stack at one concurrency."""

    stack: str
    streams: int
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    tokens: int = 0
    requests: int = 0
    errors: int = 0
    wall: float = 0.0

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0

    def row(self) -> dict[str, object]:
        head = {"stack": self.stack, "streams": self.streams, "requests": self.requests}
        head.update(errors=self.errors, tok_s=round(self.tok_s, 1))
        pcts = ((name, q) for name in ("ttft", "itl") for q in (50, 99))
        head.update({f"{n}_p{q}_ms": ms(pct(getattr(self, n), q / 100)) for n, q in pcts})
        return head


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


class RawBatch:
    """N sequences through llama_decode together, a new request as soon as one ends."""

    def __init__(self, model: Any, tok: GgufTokenizer, streams: int, threads: int) -> None:
        import llama_cpp as lc

        self.lc, self.streams = lc, streams
        self.prompts = [tok.tokenize(tok.render_prompt([ask(p)])) for p in PROMPTS]
        room = streams * (max(map(len, self.prompts)) + 1)
        params = lc.llama_context_default_params()
        params.n_ctx, params.n_seq_max, params.kv_unified = streams * CONTEXT, streams, False
        params.n_batch = params.n_ubatch = room
        params.n_threads = params.n_threads_batch = threads
        self.ctx = lc.llama_init_from_model(model, params)
        self.mem, self.vocab = lc.llama_get_memory(self.ctx), lc.llama_model_get_vocab(model)
        self.batch, self.greedy = lc.llama_batch_init(room, 0, 1), lc.llama_sampler_init_greedy()

    def run(self, requests: int, max_tokens: int) -> Level:
        lc, batch, level = self.lc, self.batch, Level("raw", self.streams)
        todo = [requests] * self.streams
        state: list[dict[str, Any]] = [{} for _ in range(self.streams)]  # {}: no request

        def begin(s: int, now: float) -> None:
            feed = self.prompts[(s + requests - todo[s]) % len(self.prompts)]
            state[s] = {"feed": feed, "pos": 0, "t0": now, "last": 0.0, "n": 0}

        started = time.perf_counter()
        for s in range(self.streams):
            begin(s, started)
        while any(state):
            i, outputs = 0, []
            for s, st in enumerate(state):
                if not st:
                    continue
                for token in st["feed"]:
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, st["pos"], 1
                    batch.seq_id[i][0], batch.logits[i] = s, 0
                    i, st["pos"] = i + 1, st["pos"] + 1
                batch.logits[i - 1] = 1
                outputs.append((s, i - 1))
            batch.n_tokens = i
            if lc.llama_decode(self.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            now = time.perf_counter()
            for s, index in outputs:
                st = state[s]
                token = lc.llama_sampler_sample(self.greedy, self.ctx, index)
                (level.itl if st["last"] else level.ttft).append(now - (st["last"] or st["t0"]))
                st["last"], st["feed"] = now, [token]
                end = lc.llama_vocab_is_eog(self.vocab, token)
                if not end:
                    st["n"] += 1
                    level.tokens += 1
                if end or st["n"] >= max_tokens:
                    level.requests += 1
                    todo[s] -= 1
                    lc.llama_memory_seq_rm(self.mem, s, -1, -1)
                    state[s] = {}
                    if todo[s]:
                        begin(s, now)
        level.wall = time.perf_counter() - started
        return level

    def close(self) -> None:
        self.lc.llama_sampler_free(self.greedy)
        self.lc.llama_batch_free(self.batch)
        self.lc.llama_free(self.ctx)


def raw_levels(path: Path, tok: GgufTokenizer, args: argparse.Namespace) -> list[Level]:
    import llama_cpp as lc

    model = lc.llama_model_load_from_file(str(path).encode(), lc.llama_model_default_params())
    levels = []
    for n in args.concurrency:
        raw = RawBatch(model, tok, n, args.threads)
        raw.run(1, 4)  # warm up: the first decodes of a context allocate its buffers
        levels.append(raw.run(args.requests, args.max_tokens))
        raw.close()
    lc.llama_model_free(model)
    return levels


async def http_request(
    client: httpx.AsyncClient, body: dict[str, Any], tok: GgufTokenizer
) -> tuple[float, list[float], int]:
    """(TTFT, inter-token gaps, tokens) of one streamed chat completion."""
    started = time.perf_counter()
    last, tokens, ttft, itl = 0.0, 0, 0.0, []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if "error" in data:
                raise RuntimeError(str(data["error"]))
            choices = data.get("choices") or [{}]
            text = (choices[0].get("delta") or {}).get("content")
            if not text:
                continue
            now, n = time.perf_counter(), max(1, len(tok.tokenize(text)))
            if last:
                # A server may send several tokens in one event: spread the gap over them.
                itl.extend([(now - last) / n] * n)
            else:
                ttft = now - started
            last, tokens = now, tokens + n
    return ttft, itl, tokens


async def http_level(
    url: str, stack: str, streams: int, args: argparse.Namespace, tok: GgufTokenizer
) -> Level:
    level = Level(stack, streams)
    limits = httpx.Limits(max_connections=streams + 4)
    async with httpx.AsyncClient(base_url=url, timeout=1800, limits=limits) as client:
        model = (await client.get("/v1/models")).json()["data"][0]["id"]

        def body(prompt: str, max_tokens: int) -> dict[str, Any]:
            messages = [{"role": "user", "content": prompt}]
            return {"model": model, "messages": messages, "max_tokens": max_tokens,
                    "temperature": 0, "stream": True}  # fmt: skip

        await http_request(client, body("Hello", 4), tok)  # warm up

        async def stream(s: int) -> None:
            for i in range(args.requests):
                prompt = PROMPTS[(s + i) % len(PROMPTS)]
                try:
                    ttft, itl, tokens = await http_request(
                        client, body(prompt, args.max_tokens), tok
                    )
                except (httpx.HTTPError, RuntimeError, ValueError):
                    level.errors += 1
                    continue
                level.ttft.append(ttft)
                level.itl.extend(itl)
                level.tokens, level.requests = level.tokens + tokens, level.requests + 1

        started = time.perf_counter()
        await asyncio.gather(*(stream(s) for s in range(streams)))
        level.wall = time.perf_counter() - started
    return level


def launch(cmd: list[str], env: dict[str, str], log: Path, ready: str) -> subprocess.Popen[bytes]:
    """Start a server (output to ``log``) and wait until ``ready`` answers 200."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(ready, timeout=2).status_code == 200:
                return proc
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd[2]} did not start; see {log}")


def serve_levels(
    stack: str, path: Path, args: argparse.Namespace, tok: GgufTokenizer
) -> list[Level]:
    work = Path(tempfile.mkdtemp(prefix=f"axon-bench-{stack}-"))
    port, threads = str(args.port), str(args.threads)
    if stack == "axon":
        cmd = [sys.executable, "-m", "axon", "serve"]
        env = {**os.environ, "AXON_DATA_DIR": str(work), "AXON_SERVER__PORT": port}
        env.update(AXON_ENGINE__CAPACITY=str(max(args.concurrency)), AXON_LOG__LEVEL="WARNING")
        env.update(AXON_ENGINE__CONTEXT_WINDOW=str(CONTEXT), AXON_ENGINE__THREADS=threads)
        ready = f"http://127.0.0.1:{port}/readyz"
    else:
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--port", port]
        cmd += ["--interrupt_requests", "False", "--n_ctx", str(CONTEXT), "--verbose", "False"]
        cmd += ["--n_threads", threads, "--n_threads_batch", threads]
        env, ready = dict(os.environ), f"http://127.0.0.1:{port}/v1/models"
    server = launch(cmd, env, work / "server.log", ready)
    try:
        url = f"http://127.0.0.1:{port}"
        return [asyncio.run(http_level(url, stack, n, args, tok)) for n in args.concurrency]
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


async def conversation_ttft(path: Path, reuse: bool, args: argparse.Namespace) -> list[float]:
    """TTFT of each turn of one conversation (the last entry: its prompt's tokens)."""
    from axon.worker.engines.llamacpp import LlamaCppEngine

    engine = LlamaCppEngine(
        "bench", path, context_window=4096, threads=args.threads,
        default_max_tokens=args.max_tokens, prefix_reuse=reuse,
    )  # fmt: skip
    await engine.start()
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens)
    conversation: list[ChatMessage] = []
    ttfts = []
    try:
        for question in QUESTIONS:
            conversation.append(ask(question))
            started, first, reply = time.perf_counter(), 0.0, ""
            async for chunk in engine.generate(conversation, params):
                if chunk.text and not first:
                    first = time.perf_counter() - started
                reply += chunk.text
            ttfts.append(first)
            conversation.append(ChatMessage(role="assistant", content=reply))
    finally:
        await engine.close()
    return [*ttfts, engine.tokenizer.count_prompt(conversation[:-1])]


def reuse_table(path: Path, args: argparse.Namespace) -> None:
    rows: list[dict[str, object]] = []
    for reuse in (True, False):
        runs = [asyncio.run(conversation_ttft(path, reuse, args)) for _ in range(args.reuse_runs)]
        *turns, prompt = [statistics.median(t) for t in zip(*runs, strict=True)]
        row: dict[str, object] = {"prefix_reuse": reuse}
        row.update({f"turn_{i + 1}_ms": ms(t) for i, t in enumerate(turns)})
        rows.append({**row, "last_prompt_tokens": int(prompt)})
    print("\nTTFT per conversation turn (median of runs):")
    print_table(rows)


def summary(levels: list[Level]) -> None:
    by = {(lv.stack, lv.streams): lv for lv in levels}
    for (stack, n), axon in by.items():
        others = [by.get(("raw", n)), by.get(("llama-cpp-python", n))]
        if stack == "axon":
            ratios = [f"{axon.tok_s / b.tok_s:.2f}x {b.stack}" for b in others if b and b.tok_s]
            print(
                f"{n} streams: axon {axon.tok_s:.1f} tok/s = {', '.join(ratios) or '-'}; ", end=""
            )
            print(f"median TTFT {ms(pct(axon.ttft, 0.5))} ms")


def chart(levels: list[Level], out: Path) -> None:
    import matplotlib.pyplot as plt

    plt.switch_backend("Agg")  # files only: no display here

    panels: list[tuple[str, Callable[[Level], float], bool]] = [
        ("output tokens/s (all streams)", lambda lv: lv.tok_s, False),
        ("TTFT p50 (ms)", lambda lv: ms(pct(lv.ttft, 0.5)), True),
        ("inter-token latency p50 (ms)", lambda lv: ms(pct(lv.itl, 0.5)), True),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    streams = sorted({lv.streams for lv in levels})
    for ax, (title, value, log) in zip(axes, panels, strict=True):
        for stack in dict.fromkeys(lv.stack for lv in levels):
            mine = [lv for lv in levels if lv.stack == stack]
            ax.plot([lv.streams for lv in mine], [value(lv) for lv in mine], "o-", label=stack)
        ax.set(title=title, xlabel="concurrent streams", yscale="log" if log else "linear")
        ax.set_xscale("log", base=2)
        ax.set_xticks(streams, [str(n) for n in streams])
        ax.yaxis.set_major_formatter("{x:g}")
        ax.yaxis.set_minor_formatter("")
        ax.grid(True, alpha=0.3)
    axes[0].legend()
    fig.suptitle("SmolLM2-135M Q4_1 on this machine's CPU")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stacks", nargs="+", default=["raw", "axon", "llama-cpp-python"],
        choices=["raw", "axon", "llama-cpp-python"],
    )  # fmt: skip
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests", type=int, default=2, help="requests per stream")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--port", type=int, default=18300)
    parser.add_argument("--reuse-runs", type=int, default=3, help="conversations per setting")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/engines.png"))
    args = parser.parse_args()
    path = default_model_path()
    tok = GgufTokenizer(path)
    levels: list[Level] = []
    for stack in args.stacks:
        runs = (
            raw_levels(path, tok, args) if stack == "raw" else serve_levels(stack, path, args, tok)
        )
        levels += runs
        print_table([lv.row() for lv in runs])
    print_table([lv.row() for lv in levels])
    summary(levels)
    chart(levels, args.out)
    print(f"chart: {args.out}")
    if args.reuse_runs:  # 0 skips the conversation
        reuse_table(path, args)


if __name__ == "__main__":
    main()
