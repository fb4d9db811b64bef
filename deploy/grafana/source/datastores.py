"""The datastores as Axon sees them: PostgreSQL, Redis and RabbitMQ."""

from __future__ import annotations

from source.panels import Dashboard, Row, Target, graph, quantiles
from source.promql import MODEL, per_second, quantile, share


def _by_operation(histogram: str, q: float) -> Target:
    return Target(quantile(q, histogram, by="operation"), f"p{round(q * 100)} {{{{operation}}}}")


_STORE = "axon_store_operation_duration_seconds"
_CACHE = "axon_cache_operation_duration_seconds"

DATASTORES = Dashboard(
    "axon-datastores",
    "Axon / Datastores",
    "PostgreSQL, Redis and RabbitMQ as Axon sees them: latency, errors and traffic.",
    (
        Row("PostgreSQL (session store)"),
        graph(
            "Store call latency by operation",
            "Session-store calls, retries included.",
            "s",
            _by_operation(_STORE, 0.5),
            _by_operation(_STORE, 0.99),
            traffic=True,
            width=8,
        ),
        graph(
            "Store calls by operation",
            "Session-store calls per second.",
            "ops",
            Target(per_second(_STORE + "_count", by="operation"), "{{operation}}"),
            traffic=True,
            width=8,
            stacked=True,
        ),
        graph(
            "Replies stored by status",
            "Assistant replies written to the store (once each).",
            "ops",
            Target(per_second("axon_replies_stored_total", by="status"), "{{status}}"),
            traffic=True,
            width=8,
        ),
        graph(
            "Store errors",
            "Failed store calls, and store_unavailable errors answered to clients.",
            "ops",
            Target(per_second("axon_store_errors_total", by="operation"), "{{operation}}"),
            Target(per_second("axon_errors_total", 'code="store_unavailable"'), "answered"),
            traffic=False,
            width=24,
        ),
        Row("Redis (session cache and token streams)"),
        graph(
            "Cache call latency by operation",
            "Session-cache calls.",
            "s",
            _by_operation(_CACHE, 0.5),
            _by_operation(_CACHE, 0.99),
            traffic=True,
            width=8,
        ),
        graph(
            "Cache hit ratio",
            "Conversation history lookups answered by the cache.",
            "percentunit",
            Target(
                share(
                    per_second("axon_cache_lookups_total", 'result="hit"'),
                    per_second("axon_cache_lookups_total"),
                ),
                "hit ratio",
            ),
            traffic=True,
            width=8,
        ),
        graph(
            "Cache errors",
            "Failed session-cache calls (Redis unreachable).",
            "ops",
            Target(per_second("axon_cache_errors_total", by="operation"), "{{operation}}"),
            traffic=False,
            width=8,
        ),
        graph(
            "Stream entries appended",
            "Token-stream entries workers appended (each a batch of tokens).",
            "ops",
            Target(per_second("axon_stream_entries_total", MODEL, by="model"), "{{model}}"),
            traffic=True,
        ),
        graph(
            "Stream relay lag",
            "From a worker's append to the client's connection.",
            "s",
            *quantiles("axon_stream_relay_lag_seconds"),
            traffic=True,
        ),
        Row("RabbitMQ (job queues)"),
        graph(
            "Publish rate",
            "Jobs published to each model's queue.",
            "ops",
            Target(per_second("axon_jobs_published_total", MODEL, by="model"), "{{model}}"),
            traffic=True,
            width=6,
        ),
        graph(
            "Queue depth",
            "Jobs waiting, as the broker reports it.",
            "short",
            Target(f"max by (model) (axon_queue_depth_jobs{{{MODEL}}})", "{{model}}"),
            traffic=True,
            width=6,
        ),
        graph(
            "Consumers",
            "Workers consuming each queue, as the broker reports it.",
            "short",
            Target(f"max by (model) (axon_queue_consumers{{{MODEL}}})", "{{model}}"),
            traffic=True,
            width=6,
        ),
        graph(
            "Queue unavailable",
            "queue_unavailable errors answered to clients (the broker unreachable).",
            "ops",
            Target(per_second("axon_errors_total", 'code="queue_unavailable"'), "answered"),
            traffic=False,
            width=6,
        ),
    ),
)
