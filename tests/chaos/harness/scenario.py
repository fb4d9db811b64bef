"""What a scenario is (a plan, a fault, its own checks) and what its fault works with."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from .checker import Stored, Verdict
from .datastores import Datastores, Private
from .driver import Workload
from .stack import ChaosStack, Member

T = TypeVar("T")

#: Set when the test session ends: scenarios still running stop at their next pause.
_ABORTED = False


def abort() -> None:
    global _ABORTED
    _ABORTED = True


def aborted() -> bool:
    return _ABORTED


class Aborted(Exception):
    pass


@dataclass(frozen=True)
class Plan:
    name: str
    conversations: int = 8
    private_redis: bool = False
    private_postgres: bool = False
    private_rabbitmq: bool = False
    #: A Redis primary and replica under three Sentinels; the stack is given the Sentinels.
    redis_sentinels: bool = False
    #: A PostgreSQL primary and a synchronous standby; the stack is given both hosts.
    postgres_standby: bool = False
    #: Nodes of the private RabbitMQ; the stack is given every node's URL.
    rabbitmq_nodes: int = 1
    #: Roles that reach the private RabbitMQ through a proxy (``run.stores.proxy``).
    rabbitmq_proxy: tuple[str, ...] = ()
    #: Two availability zones (``harness/zones.py``): one gateway, session manager and
    #: worker in each, and the clustered datastores spread over both.
    zones: bool = False
    env: dict[str, str] = field(default_factory=dict)
    managers: int = 2
    workers: int = 2
    gateways: int = 2
    #: Replies that must be mid-stream when the fault starts.
    streaming_at_fault: int = 4
    #: How long the workload goes on after the fault has ended.
    after_s: float = 8.0
    poison_marker: str | None = None
    poison_every: int = 0
    drop_after_tokens: tuple[int, int] | None = None
    #: Send a refused turn again with its key until it is accepted (as a client that
    #: honours Retry-After does); False: a refused turn counts as sent and not accepted, and
    #: its conversation goes on with the next one.
    retry_refused: bool = True
    #: Rough run time, so that the longest scenarios start first.
    cost_s: float = 60.0

    def private(self) -> Private:
        return Private(
            redis=self.private_redis,
            redis_sentinels=self.redis_sentinels or self.zones,
            postgres=self.private_postgres,
            postgres_standby=self.postgres_standby or self.zones,
            rabbitmq=self.private_rabbitmq or self.zones,
            rabbitmq_nodes=3 if self.zones else self.rabbitmq_nodes,
            rabbitmq_proxy=self.rabbitmq_proxy,
            zones=self.zones,
        )


class Run:
    """What a scenario's fault works with."""

    def __init__(self, plan: Plan, stores: Datastores, stack: ChaosStack, load: Workload) -> None:
        self.plan = plan
        self.stores = stores
        self.stack = stack
        self.load = load
        self.http = load.http
        #: When the fault struck, for faults that end later than that on their own terms
        #: (a failover ends once the datastore serves again): see ``begin_fault``.
        self.fault_began_at: float | None = None
        self.fault_ended_at: float | None = None
        #: The scenario's own failed expectations (besides the checker's).
        self.problems: list[str] = []
        #: Facts worth a line in the report (timings, counts).
        self.notes: list[str] = []
        #: Counters summed over the stack's processes at the end (since each one's start).
        self.metrics: list[str] = []
        #: The workload's stored messages, once settled (for a scenario's own checks).
        self.stored: list[Stored] = []
        self.started = time.monotonic()

    async def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if _ABORTED:
                raise Aborted("the test session is ending")
            await asyncio.sleep(min(0.2, deadline - time.monotonic()))

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking step (a signal and a wait, a restart) off the event loop, so the
        workload keeps streaming meanwhile."""
        return await asyncio.to_thread(fn, *args)

    async def restart(self, member: Member) -> None:
        """Restart a stopped or killed member, noting how long its boot took (on a busy
        machine most of "whole again" after a process crash is that boot)."""
        took = await self.call(self.stack.restart, member)
        self.note(f"{member.name} restarted, ready after {took:.1f} s")

    def begin_fault(self) -> None:
        """The fault strikes now; the report then also tells how long the stack took to be
        whole again counted from here."""
        self.fault_began_at = time.monotonic()

    def end_fault(self) -> None:
        self.fault_ended_at = time.monotonic()
        self.note(f"fault ended at +{self.fault_ended_at - self.started:.1f} s")

    def expect(self, ok: bool, problem: str) -> None:
        if not ok:
            self.problems.append(problem)

    def note(self, text: str) -> None:
        self.notes.append(text)


Fault = Callable[[Run], Awaitable[None]]
Verify = Callable[[Run, Verdict], Awaitable[None] | None]


@dataclass(frozen=True)
class Scenario:
    plan: Plan
    fault: Fault
    #: Checks of the scenario's own, once the checker has run.
    verify: Verify | None = None

    def __hash__(self) -> int:
        return hash(self.plan.name)
