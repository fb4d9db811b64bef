"""The job queues: depth and wait, recovery after a worker loss, and failures."""

from __future__ import annotations

from source.panels import Dashboard, Row, Target, graph, quantiles
from source.promql import MODEL, per_second

QUEUE = Dashboard(
    "axon-queue",
    "Axon / Queue",
    "Jobs between the session managers and the workers: depth, wait, and what went wrong.",
    (
        Row("Flow"),
        graph(
            "Queue depth",
            "Jobs waiting in each model's queue, as the broker reports it.",
            "short",
            Target(f"max by (model) (axon_queue_depth_jobs{{{MODEL}}})", "{{model}}"),
            traffic=True,
            width=8,
        ),
        graph(
            "Consumers",
            "Workers consuming each model's queue, as the broker reports it.",
            "short",
            Target(f"max by (model) (axon_queue_consumers{{{MODEL}}})", "{{model}}"),
            traffic=True,
            width=8,
        ),
        graph(
            "Jobs published",
            "Jobs published to each model's queue.",
            "ops",
            Target(per_second("axon_jobs_published_total", MODEL, by="model"), "{{model}}"),
            traffic=True,
            width=8,
        ),
        graph(
            "Queue wait",
            "Time a job waited before a worker started its first attempt.",
            "s",
            *quantiles("axon_job_queue_wait_seconds", MODEL),
            traffic=True,
            width=24,
        ),
        Row("Recovery"),
        graph(
            "Redeliveries",
            "Deliveries of a job delivered before: a worker died, stopped, or handed it back.",
            "ops",
            Target(per_second("axon_jobs_redelivered_total", MODEL, by="model"), "{{model}}"),
            traffic=False,
            width=8,
        ),
        graph(
            "Resumed after a worker loss, and lease takeovers",
            "Replies continued by another worker, and replies republished because their "
            "worker stopped renewing its lease.",
            "ops",
            Target(per_second("axon_jobs_resumed_total", MODEL, by="model"), "resumed {{model}}"),
            Target(per_second("axon_lease_takeovers_total"), "takeovers"),
            traffic=False,
            width=8,
        ),
        graph(
            "Fenced writes",
            "Attempts that lost their reply to a newer attempt; their writes were refused.",
            "ops",
            Target(per_second("axon_fenced_writes_total", MODEL, by="model"), "{{model}}"),
            traffic=False,
            width=8,
        ),
        Row("Failures"),
        graph(
            "Dead-lettered",
            "Jobs the broker dead-lettered; their clients were told.",
            "ops",
            Target(per_second("axon_jobs_dead_lettered_total", MODEL, by="model"), "{{model}}"),
            traffic=False,
            width=8,
        ),
        graph(
            "Expired in the queue",
            "Jobs that waited longer than the queue-wait limit and were failed unrun.",
            "ops",
            Target(per_second("axon_jobs_expired_in_queue_total", MODEL, by="model"), "{{model}}"),
            traffic=False,
            width=8,
        ),
        graph(
            "Load shed",
            "Requests refused at once because a model's queue was too deep or too slow.",
            "ops",
            Target(per_second("axon_shed_total", by="reason"), "{{reason}}"),
            traffic=False,
            width=8,
        ),
    ),
)
