"""The distributed stack (gateways -> session managers -> queue -> workers) as real axon
processes on a scenario's datastores, each of which a scenario may crash, pause, stop or
restart on the same port with the same environment."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from support.clusters import free_port
from support.server import AxonProcess, run_axon

#: The fake engine, slow enough that a reply lasts about three seconds (faults land
#: mid-stream), on the distributed backends.
BASE_ENV = {
    "AXON_ENGINE__KIND": "fake",
    "AXON_ENGINE__FAKE_TOKENS_PER_SECOND": "40",
    "AXON_ENGINE__FAKE_REPLY_TOKENS": "120",
    # Fake replies cost no compute: let each worker hold every conversation at once.
    "AXON_ENGINE__CAPACITY": "32",
    # A few tokens per stream entry keeps two cores free for the faults under test.
    "AXON_STREAM__BATCH_INTERVAL_MS": "100",
    # Re-attaching clients may briefly hold two slots; limits are not under test here.
    "AXON_LIMITS__TENANT_MAX_STREAMS": "0",
}
REPLY_TOKENS = 120


@dataclass
class Member:
    """One process of the stack, by role and index (``worker-1``)."""

    name: str
    process: AxonProcess

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def alive(self) -> bool:
        return self.process.proc is not None and self.process.proc.poll() is None


class ChaosStack:
    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str],
        *,
        managers: int = 2,
        workers: int = 2,
        gateways: int = 2,
        member_env: Callable[[str, int], dict[str, str]] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.env = {**BASE_ENV, **env}
        self._member_env = member_env
        #: Members taken out of the stack for good (a lost zone): still stopped at the end.
        self.gone: list[Member] = []
        run_axon(["db", "upgrade"], data_dir=data_dir, env=self.env)
        self.managers = [self._member("session-manager", i) for i in range(managers)]
        self.workers = [self._member("worker", i) for i in range(workers)]
        upstreams = "[" + ",".join(f'"{m.url}"' for m in self.managers) + "]"
        self.gateways = [
            self._member("gateway", i, {"AXON_GATEWAY__UPSTREAMS": upstreams})
            for i in range(gateways)
        ]
        try:
            # All at once: on two cores, starting them one by one costs most of a scenario.
            for member in self.members:
                member.process.start(wait=False)
            for member in self.members:
                member.process.wait_ready()
        except BaseException:
            self.stop()
            raise

    def _member(self, role: str, index: int, extra: dict[str, str] | None = None) -> Member:
        env = {**self.env, **(extra or {})}
        if self._member_env is not None:
            env |= self._member_env(role, index)
        # A port below the ephemeral range, which outgoing connections cannot take meanwhile.
        process = AxonProcess([role], data_dir=self.data_dir, env=env, port=free_port())
        short = {"session-manager": "manager"}.get(role, role)
        return Member(f"{short}-{index}", process)

    @property
    def members(self) -> list[Member]:
        return [*self.managers, *self.workers, *self.gateways]

    @property
    def gateway_urls(self) -> list[str]:
        return [g.url for g in self.gateways]

    def retire(self, member: Member) -> None:
        """Take ``member`` out of the stack for good (its zone is lost): readiness, the job
        queue's consumers and the fresh turns of "whole again" are asked of the others."""
        for group in (self.managers, self.workers, self.gateways):
            if member in group:
                group.remove(member)
        self.gone.append(member)

    # -- faults -------------------------------------------------------------------------

    def _mark(self, member: Member, what: str) -> None:
        """A line in the member's own log, so its log reads with the fault in place."""
        with member.process.log_path.open("a") as log:
            log.write(f"=== chaos {time.strftime('%H:%M:%S')}: {what} ===\n")

    def kill(self, member: Member) -> None:
        self._mark(member, "SIGKILL")
        assert member.process.proc is not None
        member.process.proc.send_signal(signal.SIGKILL)
        member.process.proc.wait()

    def pause(self, member: Member) -> None:
        self._mark(member, "SIGSTOP")
        assert member.process.proc is not None
        member.process.proc.send_signal(signal.SIGSTOP)

    def resume(self, member: Member) -> None:
        assert member.process.proc is not None
        member.process.proc.send_signal(signal.SIGCONT)
        self._mark(member, "SIGCONT")

    def terminate(self, member: Member, timeout: float) -> tuple[float, int | None]:
        """SIGTERM, then wait up to ``timeout`` for the process to exit by itself. Returns
        (seconds it took, exit code), with None as the code when it had to be killed."""
        self._mark(member, "SIGTERM")
        proc = member.process.proc
        assert proc is not None
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        return time.monotonic() - started, code

    def restart(self, member: Member) -> float:
        """Start a stopped or killed member again (same port, same environment); returns
        how long it took to be ready."""
        self._mark(member, "restart")
        started = time.monotonic()
        member.process.start()
        return time.monotonic() - started

    # -- state --------------------------------------------------------------------------

    async def readiness(self, http: httpx.AsyncClient) -> dict[str, int | str]:
        """Every member's /readyz status (or why it could not answer)."""

        async def one(member: Member) -> int | str:
            try:
                return (await http.get(f"{member.url}/readyz", timeout=3)).status_code
            except httpx.HTTPError as exc:
                return type(exc).__name__

        answers = await asyncio.gather(*(one(m) for m in self.members))
        return {m.name: a for m, a in zip(self.members, answers, strict=True)}

    def logs(self) -> dict[str, Path]:
        return {m.name: m.process.log_path for m in [*self.members, *self.gone]}

    def stop(self) -> None:
        """SIGTERM to every member at once (one by one, each waiting out its grace, takes
        most of a minute), then SIGKILL to any still running after 30 s."""
        running = [m.process.proc for m in [*self.members, *self.gone] if m.alive()]
        for proc in running:
            assert proc is not None
            proc.send_signal(signal.SIGCONT)  # a paused member cannot act on SIGTERM
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in running:
            assert proc is not None
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
