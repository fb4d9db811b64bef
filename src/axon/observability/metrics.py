"""Every metric Axon exports, defined once. Names carry their unit; labels never carry ids.

Latency and token metrics follow the OpenTelemetry GenAI semantic conventions in their
Prometheus form; Axon's own are prefixed ``axon_``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)

TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Time from a job's start on a worker to its first output token.",
    ["gen_ai_request_model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Mean time per output token after the first, per request.",
    ["gen_ai_request_model"],
    buckets=_TOKEN_LATENCY_BUCKETS,
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "gen_ai_server_request_duration_seconds",
    "Time a worker spent on one job, start to final event.",
    ["gen_ai_request_model", "finish_reason"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage",
    "Tokens per request, by type (input or output).",
    ["gen_ai_request_model", "gen_ai_token_type"],
    buckets=_TOKEN_BUCKETS,
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "axon_http_requests_total",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "axon_http_request_duration_seconds",
    "Time to the response headers (streams keep going after), by route template.",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TURN_FIRST_TOKEN = Histogram(
    "axon_turn_time_to_first_token_seconds",
    "Time from queueing a chat request to relaying its first token, as the client sees it.",
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
JOBS_PUBLISHED = Counter(
    "axon_jobs_published_total",
    "Jobs published to the queue.",
    ["model"],
    registry=REGISTRY,
)
JOBS_FINISHED = Counter(
    "axon_jobs_finished_total",
    "Jobs a worker settled, by outcome (stop, length, cancelled, error, retried, dead, "
    "handed_back, fenced, duplicate).",
    ["model", "outcome"],
    registry=REGISTRY,
)
RUNNING_SEQUENCES = Gauge(
    "axon_worker_running_sequences",
    "Jobs a worker is running now.",
    ["model"],
    registry=REGISTRY,
)
ENGINE_RUNNING = Gauge(
    "axon_engine_running_sequences",
    "Sequences the engine is decoding now.",
    ["model"],
    registry=REGISTRY,
)
ENGINE_WAITING = Gauge(
    "axon_engine_waiting_sequences",
    "Sequences the engine accepted but is not decoding yet.",
    ["model"],
    registry=REGISTRY,
)
WORKER_CAPACITY = Gauge(
    "axon_worker_capacity_sequences",
    "Jobs a worker can run at once.",
    ["model"],
    registry=REGISTRY,
)
STREAM_ENTRIES = Counter(
    "axon_stream_entries_total",
    "Token-stream entries appended (each carries a batch of tokens).",
    ["model"],
    registry=REGISTRY,
)
REPLIES_STORED = Counter(
    "axon_replies_stored_total",
    "Assistant replies written to the store (once each), by status.",
    ["status"],
    registry=REGISTRY,
)
ERRORS = Counter(
    "axon_errors_total",
    "Errors answered to clients, by stable error code.",
    ["code"],
    registry=REGISTRY,
)

AUTH_FAILURES = Counter(
    "axon_auth_failures_total",
    "Requests refused for their credential, by reason (missing, expired, revoked...).",
    ["reason"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "axon_rate_limited_total",
    "Requests refused by a rate limit, by limit (key_requests, key_tokens, "
    "tenant_requests, tenant_tokens, streams, address).",
    ["limit"],
    registry=REGISTRY,
)
SHED = Counter(
    "axon_shed_total",
    "Requests refused at once because a model's queue was too deep or too slow, by reason.",
    ["reason"],
    registry=REGISTRY,
)
QUEUE_EXPIRED = Counter(
    "axon_jobs_expired_in_queue_total",
    "Jobs that waited longer than the queue-wait limit and were failed instead of run.",
    ["model"],
    registry=REGISTRY,
)

FENCED_WRITES = Counter(
    "axon_fenced_writes_total",
    "Attempts that lost their reply to a newer attempt (a stale worker: paused, "
    "partitioned, or running a duplicate); their writes are refused.",
    ["model"],
    registry=REGISTRY,
)
TAKEOVERS = Counter(
    "axon_lease_takeovers_total",
    "Replies whose worker stopped renewing its lease, published again for another worker.",
    registry=REGISTRY,
)


def render() -> tuple[bytes, str]:
    """The registry in Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
