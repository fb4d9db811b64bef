"""Every metric Axon exports, defined once. Names carry their unit; labels never carry ids.

Latency and token metrics follow the OpenTelemetry GenAI semantic conventions in their
Prometheus form; Axon's own are prefixed ``axon_``.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)
# process_start_time_seconds, CPU seconds, resident memory: restarts and cost per role.
ProcessCollector(registry=REGISTRY)

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
#: Datastore calls: a healthy one takes a millisecond or two, a failover seconds.
_DATASTORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
_STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

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
    "Time from queueing a chat turn to relaying its first token, as the client sees it "
    "(the time-to-first-token SLO's measure).",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TURNS = Counter(
    "axon_turns_total",
    "Chat turns (session turns and stateless completions) that ended, by outcome: ok, "
    "cancelled, error (a server-side failure: the availability SLO's bad events), "
    "abandoned (the client left before the end).",
    ["model", "outcome"],
    registry=REGISTRY,
)
TURN_STAGE = Histogram(
    "axon_turn_stage_duration_seconds",
    "Time a turn spent in the stages no other metric measures: admit (session manager, "
    "request to job queued), decode (worker, first token to final event), store (writing "
    "the reply). The queue wait, prefill and relay have their own metrics.",
    ["model", "stage"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "axon_job_queue_wait_seconds",
    "Time a job waited in the queue before a worker started its first attempt.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
    registry=REGISTRY,
)
RELAY_LAG = Histogram(
    "axon_stream_relay_lag_seconds",
    "Time from a worker appending a token batch to the session manager handing it to the "
    "client's connection.",
    buckets=_TOKEN_LATENCY_BUCKETS,
    registry=REGISTRY,
)
OPEN_STREAMS = Gauge(
    "axon_open_client_streams",
    "Client streams (SSE responses) this process is serving now.",
    registry=REGISTRY,
)
CANCELLATIONS = Counter(
    "axon_cancellations_total",
    "Replies stopped before their end, by cause: client_request (the cancel endpoint), "
    "client_disconnect (a stateless client left), deadline (the request timed out), "
    "queue_wait (waited too long in the queue).",
    ["cause"],
    registry=REGISTRY,
)
BUILD_INFO = Gauge(
    "axon_build_info",
    "Always 1; labels name the version, the role, and the engine and model it serves.",
    ["version", "role", "engine", "model"],
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
PROMPT_TOKENS = Counter(
    "axon_prompt_tokens_total",
    "Prompt tokens the engine processed (cached prefix included).",
    ["model"],
    registry=REGISTRY,
)
GENERATION_TOKENS = Counter(
    "axon_generation_tokens_total",
    "Output tokens the engine generated.",
    ["model"],
    registry=REGISTRY,
)
PREFIX_CACHE_QUERIES = Counter(
    "axon_prefix_cache_queries_tokens_total",
    "Prompt tokens looked up in the engine's prefix cache.",
    ["model"],
    registry=REGISTRY,
)
PREFIX_CACHE_HITS = Counter(
    "axon_prefix_cache_hits_tokens_total",
    "Prompt tokens found in the engine's prefix cache (not computed again).",
    ["model"],
    registry=REGISTRY,
)
ENGINE_STEP = Histogram(
    "axon_engine_step_duration_seconds",
    "Time of one engine step (one batched forward pass).",
    ["model"],
    buckets=_STEP_BUCKETS,
    registry=REGISTRY,
)
ENGINE_BATCH = Histogram(
    "axon_engine_batch_size_sequences",
    "Sequences decoded together in one engine step.",
    ["model"],
    buckets=_BATCH_BUCKETS,
    registry=REGISTRY,
)
ENGINE_KV_USAGE = Gauge(
    "axon_engine_kv_cache_usage_ratio",
    "Share of the engine's KV cache in use (0 to 1).",
    ["model"],
    registry=REGISTRY,
)
QUEUE_DEPTH = Gauge(
    "axon_queue_depth_jobs",
    "Jobs waiting in a model's queue, as the broker reports it (refreshed every few "
    "seconds by each session manager; aggregate with max).",
    ["model"],
    registry=REGISTRY,
)
QUEUE_CONSUMERS = Gauge(
    "axon_queue_consumers",
    "Workers consuming a model's queue, as the broker reports it (refreshed with the depth).",
    ["model"],
    registry=REGISTRY,
)
JOBS_REDELIVERED = Counter(
    "axon_jobs_redelivered_total",
    "Deliveries of a job that had been delivered before (a worker died, stopped, or "
    "handed it back).",
    ["model"],
    registry=REGISTRY,
)
JOBS_RESUMED = Counter(
    "axon_jobs_resumed_total",
    "Replies a worker continued after another attempt had begun them (a worker lost mid-reply).",
    ["model"],
    registry=REGISTRY,
)
JOBS_DEAD_LETTERED = Counter(
    "axon_jobs_dead_lettered_total",
    "Jobs the broker dead-lettered, read back so that their clients are told.",
    ["model"],
    registry=REGISTRY,
)
STORE_DURATION = Histogram(
    "axon_store_operation_duration_seconds",
    "Time of a session-store call (PostgreSQL or SQLite), retries included, by operation.",
    ["operation"],
    buckets=_DATASTORE_BUCKETS,
    registry=REGISTRY,
)
STORE_ERRORS = Counter(
    "axon_store_errors_total",
    "Session-store calls that failed (the store unreachable or failing over), by operation.",
    ["operation"],
    registry=REGISTRY,
)
CACHE_DURATION = Histogram(
    "axon_cache_operation_duration_seconds",
    "Time of a session-cache call (Redis), by operation.",
    ["operation"],
    buckets=_DATASTORE_BUCKETS,
    registry=REGISTRY,
)
CACHE_ERRORS = Counter(
    "axon_cache_errors_total",
    "Session-cache calls that failed (Redis unreachable), by operation.",
    ["operation"],
    registry=REGISTRY,
)
CACHE_LOOKUPS = Counter(
    "axon_cache_lookups_total",
    "Conversation history lookups in the session cache, by result (hit or miss).",
    ["result"],
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


def declare(models: list[str]) -> None:
    """Create the series of rare events at zero, for each served model: a counter's first
    increment is invisible to ``rate()`` and ``increase()`` when its series did not exist
    before it, so the first error, dead letter or cancellation would not alert."""
    for model in models:
        for outcome in ("ok", "cancelled", "error", "abandoned"):
            TURNS.labels(model, outcome)
        for outcome in ("stop", "length", "cancelled", "error", "dead", "retried"):
            JOBS_FINISHED.labels(model, outcome)
        for counter in (
            JOBS_REDELIVERED,
            JOBS_RESUMED,
            JOBS_DEAD_LETTERED,
            QUEUE_EXPIRED,
            FENCED_WRITES,
            JOBS_PUBLISHED,
        ):
            counter.labels(model)
    for cause in ("client_request", "client_disconnect", "deadline", "queue_wait"):
        CANCELLATIONS.labels(cause)


def render() -> tuple[bytes, str]:
    """The registry in Prometheus text format, and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
