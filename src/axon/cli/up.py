"""``axon up``: the whole distributed stack on one machine, against the real services.

Starts session managers, workers and gateways as separate processes (the gateways
forwarding to every session manager), prints each address, and stops them all on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

from axon.config import Settings
from axon.sessions.migrate import upgrade_sync
from axon.sessions.sql import ensure_database

DEFAULT_STORE = "postgresql+asyncpg://postgres@127.0.0.1:5432/axon"
READY_TIMEOUT_S = 180.0


@dataclass
class Child:
    role: str
    port: int
    proc: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _spawn(role: str, port: int, env: dict[str, str]) -> Child:
    proc = subprocess.Popen(
        [sys.executable, "-m", "axon", role], env={**env, "AXON_SERVER__PORT": str(port)}
    )
    return Child(role, port, proc)


def _wait_ready(children: list[Child]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(children)
    while pending and time.monotonic() < deadline:
        for child in list(pending):
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.role} on port {child.port} exited")
            try:
                if httpx.get(f"{child.url}/readyz", timeout=2).status_code == 200:
                    pending.remove(child)
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    if pending:
        raise RuntimeError(f"not ready in time: {[c.role for c in pending]}")


def _stop(children: list[Child]) -> None:
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.proc.kill()


def _interrupt(*_: object) -> None:
    # SIGTERM stops the stack the same way Ctrl-C does.
    raise KeyboardInterrupt


def run_up(args: argparse.Namespace, settings: Settings) -> int:
    store_url = settings.store.url or DEFAULT_STORE
    asyncio.run(ensure_database(store_url))
    upgrade_sync(store_url)
    env = {**os.environ, "AXON_STORE__URL": store_url}
    # Workers share the machine's cores; more llama.cpp threads than cores only thrash.
    threads = max(1, (os.cpu_count() or 1) // max(1, args.workers))
    env.setdefault("AXON_ENGINE__THREADS", str(threads))
    base = args.base_port
    children: list[Child] = []
    try:
        managers = [
            _spawn("session-manager", base + 100 + i, env) for i in range(args.session_managers)
        ]
        workers = [_spawn("worker", base + 200 + i, env) for i in range(args.workers)]
        children += managers + workers
        _wait_ready(children)
        upstreams = json.dumps([m.url for m in managers])
        gateways = [
            _spawn("gateway", base + i, {**env, "AXON_GATEWAY__UPSTREAMS": upstreams})
            for i in range(args.gateways)
        ]
        children += gateways
        _wait_ready(gateways)
        for child in children:
            print(f"{child.role:16} {child.url}", flush=True)
        print("axon up: ready (Ctrl-C stops every process)", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        while all(c.proc.poll() is None for c in children):
            time.sleep(0.5)
        print("axon up: a process exited; stopping the rest", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    except RuntimeError as exc:
        print(f"axon up: {exc}", file=sys.stderr)
        return 1
    finally:
        _stop(children)
