"""The job queue interface: durable publish, consume with bounded prefetch, manual ack."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from axon.core.types import Job

#: The queue's own delivery limit as deployed. Handbacks (shutdown, outages, duplicates
#: waiting for a live attempt) requeue a job without it failing; only far more requeues
#: than any worker makes mean a job nobody can settle.
BACKSTOP_DELIVERY_LIMIT = 50


class Delivery(abc.ABC):
    """One delivery of a job. Exactly one of ``ack``, ``retry`` or ``reject`` must be called."""

    job: Job
    #: 1 on the first delivery, 2 on the first redelivery, ...
    attempt: int

    @abc.abstractmethod
    async def ack(self) -> None:
        """The job is finished (its final event is written): forget it."""

    @abc.abstractmethod
    async def retry(self) -> None:
        """Give the job back for another delivery (to any worker). Past the delivery limit
        the queue dead-letters it instead."""

    @abc.abstractmethod
    async def reject(self) -> None:
        """The job can never succeed: dead-letter it now."""


class JobQueue(abc.ABC):
    """One queue per model. Jobs are persistent; a job a worker took but did not ack (the
    worker died) is delivered again. Workers count a job's failed attempts themselves (in
    the reply's lease) and end a poison job with an error; the queue's own delivery limit,
    which differs between broker versions, is only a backstop that dead-letters a job
    handed back far more often than any worker would."""

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Connect now, so a misconfigured broker fails at startup rather than on the
        first request; raise ``QueueUnavailable`` if it cannot be reached."""

    @abc.abstractmethod
    async def depth(self, model: str) -> int:
        """Jobs of ``model`` waiting for a worker (published, not yet delivered)."""

    @abc.abstractmethod
    async def consumers(self, model: str) -> int:
        """Consumers attached to ``model``'s queue now (one per running worker): 0 means
        nothing will run the model's jobs."""

    @abc.abstractmethod
    async def publish(self, job: Job) -> None:
        """Store the job durably before returning. Raise ``QueueUnavailable`` when the
        broker cannot confirm it in time: the caller then fails fast with a 503."""

    @abc.abstractmethod
    def consume(self, model: str, prefetch: int) -> AsyncIterator[Delivery]:
        """Deliveries of ``model``'s jobs; never more than ``prefetch`` unacknowledged."""

    @abc.abstractmethod
    def dead_letters(self, model: str) -> AsyncIterator[Delivery]:
        """Jobs given up on, so that their clients can be told (ack each when done)."""

    async def ping(self) -> None:  # noqa: B027 - optional hook
        """Raise ``QueueUnavailable`` if the broker cannot be reached."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Close connections; unacknowledged deliveries return to the queue."""
