"""The distributed stack as separate ``axon`` processes (session managers, workers, and
gateways forwarding to every session manager) on the shared services, in one namespace."""

from __future__ import annotations

from pathlib import Path

from support.server import AxonProcess, run_axon
from support.services import Namespace


class Stack:
    def __init__(
        self,
        ns: Namespace,
        data_dir: Path,
        env: dict[str, str],
        *,
        managers: int = 2,
        workers: int = 2,
        gateways: int = 2,
    ) -> None:
        self.ns = ns
        self.data_dir = data_dir
        self.env = {**ns.env(), **env}
        run_axon(["db", "upgrade"], data_dir=data_dir, env=self.env)
        self.processes: list[AxonProcess] = []
        try:
            self.managers = [self.start("session-manager") for _ in range(managers)]
            self.workers = [self.start("worker") for _ in range(workers)]
            upstreams = "[" + ",".join(f'"{m.url}"' for m in self.managers) + "]"
            self.gateways = [
                self.start("gateway", {"AXON_GATEWAY__UPSTREAMS": upstreams})
                for _ in range(gateways)
            ]
        except BaseException:
            self.stop()
            raise

    def start(self, role: str, extra: dict[str, str] | None = None) -> AxonProcess:
        process = AxonProcess([role], data_dir=self.data_dir, env={**self.env, **(extra or {})})
        self.processes.append(process)
        return process.start()

    def axon(self, *args: str) -> str:
        """Run a one-shot ``axon`` command (``keys create``, ...) against this stack."""
        return run_axon(list(args), data_dir=self.data_dir, env=self.env)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
