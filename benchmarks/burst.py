"""Burst benchmark: what `axon up` does with hundreds or thousands of streams at once.

Starts the distributed stack itself (one gateway, one session manager, one worker on the
local PostgreSQL, Redis and RabbitMQ, `fake` engine at 200 tokens/s, 64-token replies,
worker capacity 64, anonymous callers on 127.0.0.1) with the project's default limits
(unless flags override them), then for each burst size fires that many concurrent
streaming `POST /v1/chat/completions` at once and reports:

- how many requests got each status (and the error codes of the refusals);
- of the 200 streams, how many ended with `data: [DONE]`, with an `error` frame, or were
  cut (ended with neither);
- latency of the refusals (503/429) and time to first byte of the 200s, p50/p99/max;
- how long after the burst `/readyz` answers 200 again, and a single chat request
  succeeds (polled every 0.2 s, up to 120 s);
- per server process: RLIMIT_NOFILE, CPU seconds used, open file descriptors before,
  during (peak) and after the burst (with its sockets to Redis, RabbitMQ and PostgreSQL,
  from clients, and from the gateway to the session manager), and the log lines that
  mention "error" or "unavailable";
- this client's own event-loop lag, `/readyz` answers during the burst, and the host's
  accept-backlog overflows (so that a slow client or a full backlog is not mistaken for a
  slow server).

Before the first burst one ordinary chat request must succeed (a stack can answer
/readyz with 200 and still not serve: e.g. a worker whose consumer died at start-up); if
it does not, the stack is restarted once.

    python benchmarks/burst.py                       # bursts of 300 and 2000
    python benchmarks/burst.py --bursts 100 --tenant-max-streams 0 --server-nofile 1024

Everything runs on 127.0.0.1 under a random database name, Redis key prefix and RabbitMQ
prefix, all removed at the end. The number of requests and every wait are bounded, so the
run always ends by itself. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from report import pct, print_table
from serving import Launched, _cleanup

ROLES = ("gateway", "session-manager", "worker")
#: Ports of the shared services, to name a process's sockets by what they connect to.
SERVICE_PORTS = {6379: "redis", 5672: "rabbitmq", 5432: "postgres"}
LOG_MATCH = re.compile(r"error|unavailable", re.IGNORECASE)
RECOVERY_POLL_S = 0.2
RECOVERY_LIMIT_S = 120.0
REQUEST_TIMEOUT_S = 120.0


# -- the stack ------------------------------------------------------------------------------


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_base_port() -> int:
    """A base port whose gateway, session-manager and worker ports (+0, +100, +200) are
    free; below the ephemeral range so that client sockets never take them."""
    for _ in range(200):
        base = random.randrange(20_000, 29_700)
        if all(_port_free(base + offset) for offset in (0, 100, 200)):
            return base
    raise RuntimeError("no free ports for the stack")


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its end.
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def stack_processes(up_pid: int) -> dict[str, int]:
    """The role processes `axon up` (``up_pid``) started: role -> pid."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or _ppid(int(entry.name)) != up_pid:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode() for a in argv if a]
        if args and args[-1] in ROLES:
            found[args[-1]] = int(entry.name)
    return found


def cpu_s(pid: int) -> float:
    """CPU time (user plus system) ``pid`` has used, in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listen_drops() -> dict[str, int]:
    """This host's TCP ListenOverflows and ListenDrops counters (connections refused or
    dropped because a listening socket's accept backlog was full)."""
    counts: dict[str, int] = {}
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return counts
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            for key in ("ListenOverflows", "ListenDrops"):
                counts[key] = int(table.get(key, 0))
    return counts


def nofile(pid: int) -> tuple[int, int]:
    soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    return soft, hard


# -- file descriptors -----------------------------------------------------------------------


def _tcp_table() -> dict[str, tuple[int, int]]:
    """Socket inode -> (local port, remote port), for every TCP socket of this host."""
    table: dict[str, tuple[int, int]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            local = int(parts[1].rsplit(":", 1)[1], 16)
            remote = int(parts[2].rsplit(":", 1)[1], 16)
            table[parts[9]] = (local, remote)
    return table


def fd_snapshot(pid: int, own_port: int, upstream_port: int | None) -> Counter[str]:
    """Open descriptors of ``pid``: ``total``, and sockets by peer (``redis``, ``rabbitmq``,
    ``postgres``, ``inbound`` on its own port, ``upstream`` to the session manager)."""
    counts: Counter[str] = Counter()
    table = _tcp_table()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return counts
    counts["total"] = len(names)
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if not target.startswith("socket:["):
            continue
        ports = table.get(target[8:-1])
        if ports is None:
            continue
        local, remote = ports
        if remote in SERVICE_PORTS:
            counts[SERVICE_PORTS[remote]] += 1
        elif local == own_port and remote:
            counts["inbound"] += 1
        elif upstream_port is not None and remote == upstream_port:
            counts["upstream"] += 1
    return counts


class FdSampler(threading.Thread):
    """Samples every server process's descriptors until stopped; keeps the maximum of each
    count per process."""

    def __init__(self, procs: dict[str, tuple[int, int, int | None]], interval_s: float = 0.25):
        super().__init__(daemon=True)
        self.procs = procs
        self.interval_s = interval_s
        self.peak: dict[str, Counter[str]] = {role: Counter() for role in procs}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            for role, (pid, port, upstream) in self.procs.items():
                snap = fd_snapshot(pid, port, upstream)
                peak = self.peak[role]
                for key, value in snap.items():
                    peak[key] = max(peak[key], value)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> dict[str, Counter[str]]:
        self._stop_event.set()
        self.join()
        return self.peak


# -- the burst ------------------------------------------------------------------------------


@dataclass
class Outcome:
    #: HTTP status, or the name of the exception when no response came.
    status: int | str
    #: For 200s: ``done``, ``error`` (an error frame) or ``cut``; else ``refused``.
    end: str
    #: Error code and message of a refusal's body or of the stream's error frame.
    code: str | None = None
    #: Refusals: time to the end of the answer. 200s: time to the first body byte.
    latency_s: float = 0.0
    #: 200s: time to the first content token.
    ttft_s: float | None = None
    #: Why a stream was cut (the exception), if one was raised.
    detail: str | None = None


def _error_code(raw: bytes | str) -> str | None:
    """``code: message`` of an error body (OpenAI's shape), or None."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), dict):
        error = data["error"]
        return f"{error.get('code')}: {str(error.get('message'))[:70]}"
    return None


async def one_stream(client: httpx.AsyncClient, model: str, index: int) -> Outcome:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": f"Burst request {index}: say something."}],
        "stream": True,
    }
    started = time.perf_counter()
    status: int | None = None
    first: float | None = None
    ttft: float | None = None
    done = False
    error: str | None = None
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            status = response.status_code
            if status != 200:
                raw = await response.aread()
                return Outcome(status, "refused", _error_code(raw), time.perf_counter() - started)
            pending_error_event = False
            async for line in response.aiter_lines():
                now = time.perf_counter()
                if first is None:
                    first = now
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("event: error"):
                    pending_error_event = True
                    error = error or "unknown"
                elif line.startswith("data: "):
                    if pending_error_event or line.startswith('data: {"error"'):
                        error = _error_code(line[6:]) or error or "unknown"
                        pending_error_event = False
                    elif ttft is None and '"content":"' in line and '"content":""' not in line:
                        ttft = now - started
    except httpx.HTTPError as exc:
        if status is None:
            return Outcome(type(exc).__name__, "refused", None, time.perf_counter() - started)
        if status == 200:
            end = "error" if error else "cut"
            return Outcome(
                200, end, error, (first or time.perf_counter()) - started, ttft, type(exc).__name__
            )
        return Outcome(
            status, "refused", None, time.perf_counter() - started, None, type(exc).__name__
        )
    end = "error" if error else "done" if done else "cut"
    return Outcome(200, end, error, (first or time.perf_counter()) - started, ttft)


@dataclass
class BurstResult:
    size: int
    outcomes: list[Outcome] = field(default_factory=list)
    unfinished: int = 0
    wall_s: float = 0.0
    client_lag_s: float = 0.0
    readyz_during: Counter[str] = field(default_factory=Counter)
    ready_after_s: float | None = None
    chat_after_s: float | None = None
    recovery_note: str = ""
    fds_before: dict[str, Counter[str]] = field(default_factory=dict)
    fds_peak: dict[str, Counter[str]] = field(default_factory=dict)
    fds_after: dict[str, Counter[str]] = field(default_factory=dict)
    logs: dict[str, tuple[int, int, Counter[str]]] = field(default_factory=dict)
    #: CPU seconds each server process used during the burst, then during the recovery.
    cpu: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: Host-wide accept-backlog overflows and drops during the burst.
    listen: dict[str, int] = field(default_factory=dict)

    def row(self, statuses: list[str]) -> dict[str, object]:
        by_status = Counter(str(o.status) for o in self.outcomes)
        ok = [o for o in self.outcomes if o.status == 200]
        refused = [o.latency_s * 1000 for o in self.outcomes if o.status in (429, 503)]
        ttfb = [o.latency_s * 1000 for o in ok]

        def ms(values: list[float], q: float) -> object:
            return round(pct(values, q)) if values else "-"

        def secs(value: float | None) -> object:
            return round(value, 1) if value is not None else f">{RECOVERY_LIMIT_S:g}"

        row: dict[str, object] = {
            "burst": self.size,
            "wall_s": round(self.wall_s, 1),
            "client_lag_ms": round(self.client_lag_s * 1000),
        }
        row.update({s: by_status.get(s, 0) for s in statuses})
        row.update(
            {
                "unfinished": self.unfinished,
                "DONE": sum(o.end == "done" for o in ok),
                "err_frame": sum(o.end == "error" for o in ok),
                "cut": sum(o.end == "cut" for o in ok),
                "refused_p50_ms": ms(refused, 0.5),
                "refused_p99_ms": ms(refused, 0.99),
                "refused_max_ms": ms(refused, 1.0),
                "ttfb_p50_ms": ms(ttfb, 0.5),
                "ttfb_p99_ms": ms(ttfb, 0.99),
                "ttfb_max_ms": ms(ttfb, 1.0),
                "readyz_ok_s": secs(self.ready_after_s),
                "chat_ok_s": secs(self.chat_after_s),
            }
        )
        return row


async def probe_readyz(url: str, stop: asyncio.Event, seen: Counter[str]) -> None:
    """``/readyz`` every 0.5 s while the burst runs, on connections of its own."""
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        while not stop.is_set():
            try:
                seen[str((await client.get("/readyz")).status_code)] += 1
            except httpx.HTTPError as exc:
                seen[type(exc).__name__] += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)


async def loop_lag(stop: asyncio.Event, result: BurstResult) -> None:
    """The longest this client's event loop was late by (a stalled client would show
    here, not on the servers)."""
    while not stop.is_set():
        before = time.perf_counter()
        await asyncio.sleep(0.1)
        result.client_lag_s = max(result.client_lag_s, time.perf_counter() - before - 0.1)


async def recover(url: str, model: str, result: BurstResult) -> None:
    """Time from the end of the burst until ``/readyz`` is 200, then until one ordinary
    (non-streaming) chat request succeeds."""
    started = time.perf_counter()
    deadline = started + RECOVERY_LIMIT_S
    last = ""
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        while time.perf_counter() < deadline:
            try:
                if result.ready_after_s is None:
                    r = await client.get("/readyz")
                    last = f"readyz {r.status_code}"
                    if r.status_code == 200:
                        result.ready_after_s = time.perf_counter() - started
                        continue
                else:
                    body = {
                        "model": model,
                        "messages": [{"role": "user", "content": "Are you back?"}],
                    }
                    left = max(1.0, deadline - time.perf_counter())
                    r = await client.post("/v1/chat/completions", json=body, timeout=min(30, left))
                    last = f"chat {r.status_code} {_error_code(r.content) or ''}".strip()
                    if r.status_code == 200 and r.json()["choices"][0]["message"]["content"]:
                        result.chat_after_s = time.perf_counter() - started
                        return
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            await asyncio.sleep(RECOVERY_POLL_S)
    result.recovery_note = f"not recovered in {RECOVERY_LIMIT_S:g} s; last: {last}"


async def run_burst(url: str, model: str, size: int, limit_s: float, result: BurstResult) -> None:
    # No keep-alive: every request of a burst has a connection of its own anyway, and
    # httpcore walks its idle connections once per idle connection on every release
    # (quadratic): thousands of idle ones would make this client the bottleneck.
    limits = httpx.Limits(max_connections=size + 16, max_keepalive_connections=0)
    timeout = httpx.Timeout(REQUEST_TIMEOUT_S)
    stop = asyncio.Event()
    prober = asyncio.create_task(probe_readyz(url, stop, result.readyz_during))
    lag = asyncio.create_task(loop_lag(stop, result))
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        started = time.perf_counter()
        tasks = [asyncio.create_task(one_stream(client, model, i)) for i in range(size)]
        finished, pending = await asyncio.wait(tasks, timeout=limit_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        result.wall_s = time.perf_counter() - started
    stop.set()
    await asyncio.gather(prober, lag)
    for task in finished:
        exc = task.exception()
        if exc is not None:
            result.outcomes.append(Outcome(type(exc).__name__, "refused", None, result.wall_s))
        else:
            result.outcomes.append(task.result())
    result.unfinished = len(pending)


# -- logs -----------------------------------------------------------------------------------


def read_logs(path: Path, start: int, end: int) -> dict[str, tuple[int, int, Counter[str]]]:
    """Lines of the stack's log between two offsets, per process (the JSON ``service``
    field; other lines under ``other``): total, those mentioning "error" or
    "unavailable" (anywhere but the logger's name), and those grouped by message and
    code."""
    with path.open("rb") as f:
        f.seek(start)
        text = f.read(end - start).decode(errors="replace")
    out: dict[str, tuple[int, int, Counter[str]]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            role = str(entry.get("service", "other")).removeprefix("axon-")
            extra = entry.get("code") or entry.get("error") or entry.get("reason") or ""
            key = f"{entry.get('level', '?')}: {entry.get('event', '')}"
            if extra:
                key += f" [{extra}]"
            if "exception" in entry:
                key += " <" + str(entry["exception"]).strip().splitlines()[-1][:120] + ">"
        else:
            role = "other"
            key = line.strip()[:140]
        key = " ".join(key.split())
        # uvicorn's logger is named "uvicorn.error" whatever it says: not a match by itself.
        searched = (
            json.dumps({k: v for k, v in entry.items() if k != "logger"})
            if isinstance(entry, dict)
            else line
        )
        total, matched, groups = out.get(role, (0, 0, Counter()))
        hit = bool(LOG_MATCH.search(searched))
        if hit:
            groups[key] += 1
        out[role] = (total + 1, matched + hit, groups)
    return out


# -- the run --------------------------------------------------------------------------------


def raise_own_nofile(wanted: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def _terminate(*_: object) -> None:
    raise KeyboardInterrupt


def stack_env(args: argparse.Namespace, work: Path, tag: str) -> dict[str, str]:
    # Start from no AXON_* setting at all: the stack runs on the project's defaults, and
    # only what this benchmark (or its flags) chooses differs.
    inherited = {k: v for k, v in os.environ.items() if not k.upper().startswith("AXON_")}
    dropped = sorted(set(os.environ) - set(inherited))
    if dropped:
        print(f"ignoring inherited settings: {', '.join(dropped)}")
    env = {
        **inherited,
        "AXON_DATA_DIR": str(work),
        "AXON_STORE__URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/axon_burst_{tag}",
        "AXON_BACKENDS__REDIS_PREFIX": f"axon-burst-{tag}:",
        "AXON_BACKENDS__RABBITMQ_PREFIX": f"axon-burst-{tag}",
        "AXON_SERVER__HOST": "127.0.0.1",
        "AXON_ENGINE__KIND": "fake",
        "AXON_ENGINE__CAPACITY": str(args.capacity),
        "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": str(args.fake_speed),
        "AXON_ENGINE__FAKE_REPLY_TOKENS": str(args.reply_tokens),
    }
    if args.max_queue_depth is not None:
        env["AXON_LIMITS__MAX_QUEUE_DEPTH"] = str(args.max_queue_depth)
    if args.tenant_max_streams is not None:
        env["AXON_LIMITS__TENANT_MAX_STREAMS"] = str(args.tenant_max_streams)
    if args.log_level:
        env["AXON_LOG__LEVEL"] = args.log_level
    return env


def start_stack(
    env: dict[str, str], base: int, log: Path, server_nofile: int | None
) -> tuple[Launched, dict[str, int]]:
    """`axon up` with one process of each role; its children inherit this process's
    RLIMIT_NOFILE, so it is set to ``server_nofile`` (if given) while they start."""
    own = resource.getrlimit(resource.RLIMIT_NOFILE)
    if server_nofile is not None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (server_nofile, own[1]))
    try:
        args = ["up", "--gateways", "1", "--session-managers", "1", "--workers", "1"]
        up = Launched([*args, "--base-port", str(base)], env, log)
        try:
            up.wait_ready(f"http://127.0.0.1:{base}")
        except BaseException:
            up.stop()
            raise
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, own)
    return up, stack_processes(up.proc.pid)


def warm_up(url: str, timeout_s: float = 30.0) -> str | None:
    """One ordinary chat request through the whole stack; None when it succeeded, else
    what went wrong. A stack whose /readyz is 200 may still not serve (a worker whose
    consumer died at start-up): a burst against it would measure nothing useful."""
    deadline = time.monotonic() + timeout_s
    body = {"messages": [{"role": "user", "content": "Warm up."}]}
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            r = httpx.post(
                f"{url}/v1/chat/completions", json=body, timeout=deadline - time.monotonic()
            )
            if r.status_code == 200:
                return None
            last = f"{r.status_code} {_error_code(r.content)}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    return last


def stop_stack(up: Launched, pids: dict[str, int]) -> None:
    up.stop()
    for pid in pids.values():
        # `axon up` stops its children; one left behind (it was killed) is ended here.
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        time.sleep(2)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def print_report(results: list[BurstResult], pids: dict[str, int], limits: dict[str, object]):
    statuses = sorted(
        {str(o.status) for r in results for o in r.outcomes} | {"200", "429", "503"},
        key=lambda s: (not s.isdigit(), s),
    )
    print()
    print("== bursts (latencies in ms; readyz_ok_s / chat_ok_s: seconds after the burst) ==")
    print_table([r.row(statuses) for r in results])
    print()
    print("== what each answer was ==")
    rows = []
    for r in results:
        kinds = Counter(
            f"{o.status} {o.end}"
            + (f" {o.code}" if o.code else "")
            + (f" ({o.detail})" if o.detail else "")
            for o in r.outcomes
        )
        for kind, n in kinds.most_common():
            rows.append({"burst": r.size, "answer": kind, "count": n})
        if r.unfinished:
            rows.append(
                {"burst": r.size, "answer": "unfinished (cancelled)", "count": r.unfinished}
            )
        during = " ".join(f"{k}:{v}" for k, v in sorted(r.readyz_during.items()))
        rows.append({"burst": r.size, "answer": f"/readyz during the burst: {during}", "count": ""})
        if r.recovery_note:
            rows.append({"burst": r.size, "answer": r.recovery_note, "count": ""})
        backlog = " ".join(f"{k}:{v}" for k, v in sorted(r.listen.items()))
        rows.append({"burst": r.size, "answer": f"accept backlog (host): {backlog}", "count": ""})
    print_table(rows)
    print()
    print(
        "== server processes: RLIMIT_NOFILE, CPU seconds (burst/recovery), open descriptors "
        "(before/peak/after) =="
    )
    rows = []
    for r in results:
        for role, pid in pids.items():
            counts = (r.fds_before[role], r.fds_peak[role], r.fds_after[role])
            row: dict[str, object] = {
                "burst": r.size,
                "process": role,
                "pid": pid,
                "nofile": limits.get(role, "?"),
                "cpu_s": "{:.1f}/{:.1f}".format(*r.cpu.get(role, (0.0, 0.0))),
            }
            for key in ("total", "inbound", "upstream", "redis", "rabbitmq", "postgres"):
                row["fds" if key == "total" else key] = "/".join(str(c.get(key, 0)) for c in counts)
            rows.append(row)
    print_table(rows)
    print()
    print('== log lines mentioning "error" or "unavailable", burst and recovery ==')
    rows = []
    for r in results:
        for role, (total, matched, groups) in sorted(r.logs.items()):
            rows.append(
                {
                    "burst": r.size,
                    "process": role,
                    "lines": total,
                    "matched": matched,
                    "message": "",
                    "count": "",
                }
            )
            for key, n in groups.most_common(6):
                rows.append(
                    {
                        "burst": "",
                        "process": "",
                        "lines": "",
                        "matched": "",
                        "message": key[:150],
                        "count": n,
                    }
                )
    if rows:
        print_table(rows)


def run(args: argparse.Namespace) -> None:
    work = Path(args.logs or tempfile.mkdtemp(prefix="axon-burst-"))
    work.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    env = stack_env(args, work, tag)
    base = args.base_port or free_base_port()
    url = f"http://127.0.0.1:{base}"
    log = work / "up.log"
    own_start = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(f"stack on {url} (logs: {log}); database axon_burst_{tag}, prefix axon-burst-{tag}")
    results: list[BurstResult] = []
    up: Launched | None = None
    pids: dict[str, int] = {}
    model = env.get("AXON_ENGINE__MODEL", "smollm2-135m-instruct")
    limits: dict[str, object] = {}
    signal.signal(signal.SIGTERM, _terminate)
    try:
        for attempt in (1, 2):
            up, pids = start_stack(env, base, log, args.server_nofile)
            failure = warm_up(url)
            if failure is None:
                break
            print(
                f"warm-up chat request failed ({failure}) although /readyz is 200; "
                f"see {log}" + ("; restarting the stack once" if attempt == 1 else "")
            )
            stop_stack(up, pids)
            up = None
            if attempt == 2:
                raise RuntimeError("the stack does not serve chat requests")
        assert up is not None
        own = raise_own_nofile(max(args.bursts) * 2 + 1024)
        print(f"this script's RLIMIT_NOFILE: {own_start} at start, {own} now")
        limits = {role: "{}/{}".format(*nofile(pid)) for role, pid in pids.items()}
        for role, pid in pids.items():
            print(f"{role:16} pid {pid:7}  RLIMIT_NOFILE soft/hard {limits[role]}")
        ports = {"gateway": base, "session-manager": base + 100, "worker": base + 200}
        watched = {
            role: (pid, ports[role], base + 100 if role == "gateway" else None)
            for role, pid in pids.items()
        }
        model = httpx.get(f"{url}/v1/models", timeout=10).json()["data"][0]["id"]
        for size in args.bursts:
            result = BurstResult(size)
            time.sleep(args.settle_s)
            offset = log.stat().st_size
            result.fds_before = {r: fd_snapshot(*w) for r, w in watched.items()}
            cpu0 = {r: cpu_s(p) for r, p in pids.items()}
            drops0 = listen_drops()
            sampler = FdSampler(watched)
            sampler.start()
            print(f"burst of {size} streams...", flush=True)
            try:
                asyncio.run(run_burst(url, model, size, args.burst_limit_s, result))
            finally:
                result.fds_peak = sampler.stop()
            cpu1 = {r: cpu_s(p) for r, p in pids.items()}
            result.listen = {k: v - drops0.get(k, 0) for k, v in listen_drops().items()}
            asyncio.run(recover(url, model, result))
            cpu2 = {r: cpu_s(p) for r, p in pids.items()}
            result.cpu = {r: (cpu1[r] - cpu0[r], cpu2[r] - cpu1[r]) for r in pids}
            result.fds_after = {r: fd_snapshot(*w) for r, w in watched.items()}
            time.sleep(0.5)  # let the last log lines reach the file
            result.logs = read_logs(log, offset, log.stat().st_size)
            results.append(result)
            done = sum(o.end == "done" for o in result.outcomes)
            print(
                f"  {len(result.outcomes)} answered, {done} streams completed, "
                f"{result.wall_s:.1f} s",
                flush=True,
            )
    except KeyboardInterrupt:
        print("interrupted; stopping the stack")
    finally:
        if up is not None:
            stop_stack(up, pids)
        try:
            asyncio.run(_cleanup(env, model))
            print(f"removed database axon_burst_{tag}, keys axon-burst-{tag}:*, queues")
        except Exception as exc:  # report it, never hide the results
            print(f"cleanup failed: {type(exc).__name__}: {exc}")
    if results:
        print_report(results, pids, limits)
    print(f"\nlogs kept in {work}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bursts", type=int, nargs="+", default=[300, 2000])
    parser.add_argument("--capacity", type=int, default=64, help="worker capacity")
    parser.add_argument("--fake-speed", type=float, default=200.0, help="fake engine tokens/s")
    parser.add_argument("--reply-tokens", type=int, default=64, help="fake engine reply length")
    parser.add_argument(
        "--max-queue-depth", type=int, help="AXON_LIMITS__MAX_QUEUE_DEPTH (default: project's)"
    )
    parser.add_argument(
        "--tenant-max-streams",
        type=int,
        help="AXON_LIMITS__TENANT_MAX_STREAMS (default: project's)",
    )
    parser.add_argument(
        "--server-nofile",
        type=int,
        help="RLIMIT_NOFILE soft limit of the server processes (default: inherited)",
    )
    parser.add_argument("--log-level", help="AXON_LOG__LEVEL (default: project's)")
    parser.add_argument("--base-port", type=int, help="gateway port (default: a free one)")
    parser.add_argument(
        "--burst-limit-s", type=float, default=180.0, help="longest one burst may run"
    )
    parser.add_argument("--settle-s", type=float, default=3.0, help="pause before each burst")
    parser.add_argument("--logs", help="directory for the stack's log (default: a temp dir)")
    args = parser.parse_args()
    run(args)


if __name__ == "__main__":
    main()
