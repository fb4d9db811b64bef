"""``axon up``: the whole distributed stack on one machine, against the real services.

Starts session managers, workers and gateways as separate processes (the gateways
forwarding to every session manager), prints each address and pid, and supervises them:
a process that exits is restarted on its port (see ``axon.cli.supervisor``). Ctrl-C or
SIGTERM stops them all, front to back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

import httpx

from axon.cli.supervisor import Child, ChildSpec, Supervisor
from axon.config import Settings
from axon.sessions.database import ensure_database
from axon.sessions.migrate import upgrade_sync

DEFAULT_STORE = "postgresql+asyncpg://postgres@127.0.0.1:5432/axon"
READY_TIMEOUT_S = 180.0
#: Front to back: a gateway stops first and finishes its streams while the session
#: managers and workers behind it still serve them; a worker stops last.
STOP_ORDER = ("gateway", "session-manager", "worker")


def _wait_ready(supervisor: Supervisor, children: list[Child]) -> bool:
    """Wait until every child answers ``/readyz``; False if a stop was requested meanwhile.

    A child that exits before it was ever ready is a setup error (a port in use, a bad
    setting), not a crash: restarting it would only loop, so ``axon up`` fails instead."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    pending = list(children)
    while pending and not supervisor.stopping:
        if time.monotonic() > deadline:
            raise RuntimeError(f"not ready in time: {[c.spec.role for c in pending]}")
        for child in list(pending):
            code = child.proc.poll()
            if code is not None:
                raise RuntimeError(f"{child.describe()} exited with {code} before it was ready")
            try:
                if httpx.get(f"{child.spec.url}/readyz", timeout=2).status_code == 200:
                    pending.remove(child)
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    return not supervisor.stopping


def run_up(args: argparse.Namespace, settings: Settings) -> int:
    store_url = settings.store.url or DEFAULT_STORE
    asyncio.run(ensure_database(store_url))
    upgrade_sync(store_url)
    env = {**os.environ, "AXON_STORE__URL": store_url}
    # Workers share the machine's cores; more llama.cpp threads than cores only thrash.
    threads = max(1, (os.cpu_count() or 1) // max(1, args.workers))
    env.setdefault("AXON_ENGINE__THREADS", str(threads))
    base = args.base_port
    supervisor = Supervisor()
    # From here on Ctrl-C and SIGTERM are requests the loops honour, not exceptions.
    supervisor.install_signal_handlers()
    try:
        managers = [
            supervisor.start(ChildSpec("session-manager", base + 100 + i, env))
            for i in range(args.session_managers)
        ]
        workers = [
            supervisor.start(ChildSpec("worker", base + 200 + i, env)) for i in range(args.workers)
        ]
        if not _wait_ready(supervisor, managers + workers):
            return 0
        upstreams = json.dumps([m.spec.url for m in managers])
        gateway_env = {**env, "AXON_GATEWAY__UPSTREAMS": upstreams}
        gateways = [
            supervisor.start(ChildSpec("gateway", base + i, gateway_env))
            for i in range(args.gateways)
        ]
        if not _wait_ready(supervisor, gateways):
            return 0
        for child in supervisor.children:
            print(f"{child.spec.role:16} {child.spec.url}  pid {child.pid}", flush=True)
        print("axon up: ready (exited processes restart; Ctrl-C stops every one)", flush=True)
        supervisor.run()
        return 0
    except RuntimeError as exc:
        print(f"axon up: {exc}", file=sys.stderr)
        return 1
    finally:
        supervisor.stop(STOP_ORDER)
