"""Axon's Grafana dashboards as code: `python deploy/grafana/dashboards.py` writes their JSON.

The committed files in `dashboards/` are generated from this module (a test keeps them in
sync). Every panel reads the Prometheus datasource that `provisioning/datasources/axon.yml`
defines, by its fixed uid. Queries use only two template variables, `$__rate_interval` and
`$model`, so that a test can substitute them and run every query against a live Prometheus.
"""

# No `from __future__ import annotations`: this file is loaded by path (it is not in a
# package), and dataclasses resolve string annotations through `sys.modules`.

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict, Unpack

#: The datasource `provisioning/datasources/axon.yml` defines.
DATASOURCE_UID = "axon-prometheus"
DATASOURCE = {"type": "prometheus", "uid": DATASOURCE_UID}
OUTPUT = Path(__file__).resolve().parent / "dashboards"

# Selectors. Worker metrics named after the OpenTelemetry GenAI conventions carry the model
# as `gen_ai_request_model`; Axon's own carry it as `model`.
MODEL = 'model=~"$model"'
GEN_AI_MODEL = 'gen_ai_request_model=~"$model"'
#: Probes and scrapes are not traffic: a failing readiness probe is not a user's 503.
API = 'route!~"/healthz|/readyz|/metrics"'

# The service level objectives (docs/observability.md), over 30 days.
SLO_PERIOD = "30d"
AVAILABILITY_BUDGET = 0.005  # 99.5% of turns end without a server-side error
TTFT_BUDGET = 0.05  # 95% of turns relay their first token within 2.5 s
TTFT_THRESHOLD = "2.5"  # a bucket bound of axon_turn_time_to_first_token_seconds
#: Windows of the `axon_slo:*:ratio_rate<W>` recording rules in deploy/prometheus/.
BURN_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")


# -- PromQL ---------------------------------------------------------------------------------


def selector(metric: str, *matchers: str) -> str:
    return f"{metric}{{{', '.join(matchers)}}}" if matchers else metric


def rate(metric: str, *matchers: str) -> str:
    return f"rate({selector(metric, *matchers)}[$__rate_interval])"


def per_second(metric: str, *matchers: str, by: str = "") -> str:
    """Sum of a counter's per-second rate, optionally by comma-separated labels."""
    grouping = f" by ({by}) " if by else ""
    return f"sum{grouping}({rate(metric, *matchers)})"


def quantile(q: float, histogram: str, *matchers: str, by: str = "") -> str:
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) ({rate(histogram + '_bucket', *matchers)}))"


def mean(histogram: str, *matchers: str, by: str = "") -> str:
    return (
        f"{per_second(histogram + '_sum', *matchers, by=by)}"
        f" / {per_second(histogram + '_count', *matchers, by=by)}"
    )


def share(part: str, whole: str) -> str:
    """`part / whole`, where a part with no series yet (no errors so far) counts as 0."""
    return f"({part} or vector(0)) / {whole}"


# -- Panels ---------------------------------------------------------------------------------

Kind = Literal["timeseries", "stat", "table"]
#: Threshold steps: the base colour (value None) first, then (value, colour) upwards.
Thresholds = tuple[tuple[float | None, str], ...]


@dataclass(frozen=True)
class Target:
    expr: str
    legend: str = "__auto"


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    targets: tuple[Target, ...]
    #: True when the panel must show data after ordinary successful chat traffic.
    traffic: bool
    kind: Kind = "timeseries"
    width: int = 12
    height: int = 8
    stacked: bool = False
    axis_label: str = ""
    decimals: int | None = None
    thresholds: Thresholds = ((None, "green"),)
    #: One evaluation at the end of the range (tables; 30-day windows that barely move).
    instant: bool = False


@dataclass(frozen=True)
class Row:
    title: str


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    items: tuple[Panel | Row, ...]

    @property
    def file(self) -> str:
        return f"{self.uid}.json"


@dataclass(frozen=True)
class Query:
    """One panel query, for a test that runs them all against a live Prometheus."""

    dashboard: str
    panel: str
    expr: str
    traffic: bool


class Options(TypedDict, total=False):
    """A panel's optional fields (see `Panel`)."""

    width: int
    height: int
    stacked: bool
    axis_label: str
    decimals: int | None
    thresholds: Thresholds
    instant: bool


def graph(
    title: str,
    description: str,
    unit: str,
    *targets: Target,
    traffic: bool,
    **options: Unpack[Options],
) -> Panel:
    return Panel(title, description, unit, targets, traffic, **options)


def stat(
    title: str,
    description: str,
    unit: str,
    *targets: Target,
    traffic: bool,
    **options: Unpack[Options],
) -> Panel:
    return Panel(title, description, unit, targets, traffic, kind="stat", **options)


def quantiles(
    histogram: str, *matchers: str, qs: tuple[float, ...] = (0.5, 0.95, 0.99)
) -> tuple[Target, ...]:
    return tuple(Target(quantile(q, histogram, *matchers), f"p{round(q * 100)}") for q in qs)


# -- The dashboards -------------------------------------------------------------------------

_AVAILABILITY_BAD = f'sum(increase(axon_turns_total{{outcome="error", {MODEL}}}[{SLO_PERIOD}]))'
_AVAILABILITY_VALID = (
    f'sum(increase(axon_turns_total{{outcome!="abandoned", {MODEL}}}[{SLO_PERIOD}]))'
)
_TTFT = "axon_turn_time_to_first_token_seconds"
_WITHIN_THRESHOLD = f'le="{TTFT_THRESHOLD}"'
_TTFT_GOOD = f"sum(increase({selector(_TTFT + '_bucket', _WITHIN_THRESHOLD, MODEL)}[{SLO_PERIOD}]))"
_TTFT_VALID = f"sum(increase({_TTFT}_count{{{MODEL}}}[{SLO_PERIOD}]))"
_BUDGET_COLOURS: Thresholds = ((None, "red"), (0, "orange"), (0.25, "green"))
_BURN_COLOURS: Thresholds = ((None, "green"), (1, "yellow"), (6, "orange"), (14.4, "red"))


def _burn_rates(ratio: str, budget: float) -> tuple[Target, ...]:
    return tuple(Target(f"axon_slo:{ratio}:ratio_rate{w} / {budget}", w) for w in BURN_WINDOWS)


OVERVIEW = Dashboard(
    "axon-overview",
    "Axon / Service overview",
    "Golden signals of the API, turns by outcome, and the two SLOs with their error budgets.",
    (
        Row("Service level objectives (30 days)"),
        stat(
            "Availability",
            "Share of turns that ended without a server-side error (objective 99.5%). "
            "Abandoned turns do not count.",
            "percentunit",
            Target(f"1 - {share(_AVAILABILITY_BAD, _AVAILABILITY_VALID)}", "availability"),
            traffic=True,
            width=6,
            height=5,
            decimals=3,
            thresholds=((None, "red"), (1 - AVAILABILITY_BUDGET, "green")),
            instant=True,
        ),
        stat(
            "Availability error budget remaining",
            "Share of the 30-day error budget (0.5% of turns) not yet spent.",
            "percentunit",
            Target(
                f"1 - ({share(_AVAILABILITY_BAD, _AVAILABILITY_VALID)}) / {AVAILABILITY_BUDGET}",
                "budget",
            ),
            traffic=True,
            width=6,
            height=5,
            decimals=1,
            thresholds=_BUDGET_COLOURS,
            instant=True,
        ),
        stat(
            "First token within 2.5 s",
            "Share of turns whose first token reached the client within 2.5 s of queueing "
            "(objective 95%).",
            "percentunit",
            Target(f"{_TTFT_GOOD} / {_TTFT_VALID}", "within 2.5 s"),
            traffic=True,
            width=6,
            height=5,
            decimals=2,
            thresholds=((None, "red"), (1 - TTFT_BUDGET, "green")),
            instant=True,
        ),
        stat(
            "Time-to-first-token error budget remaining",
            "Share of the 30-day budget (5% of turns slower than 2.5 s) not yet spent.",
            "percentunit",
            Target(f"1 - (1 - {_TTFT_GOOD} / {_TTFT_VALID}) / {TTFT_BUDGET}", "budget"),
            traffic=True,
            width=6,
            height=5,
            decimals=1,
            thresholds=_BUDGET_COLOURS,
            instant=True,
        ),
        stat(
            "Availability burn rate",
            "Error ratio over each window divided by the budget (1 spends it in exactly 30 "
            "days). Pages at 14.4 (1h and 5m) and 6 (6h and 30m); tickets at 3 (1d and 2h) "
            "and 1 (3d and 6h). All models together.",
            "suffix:x",
            *_burn_rates("availability_errors", AVAILABILITY_BUDGET),
            traffic=False,  # no errors, no ratio: the recording rule has nothing to divide
            decimals=2,
            thresholds=_BURN_COLOURS,
        ),
        stat(
            "Time-to-first-token burn rate",
            "Share of turns slower than 2.5 s over each window divided by the budget; same "
            "alerting pairs as availability. All models together.",
            "suffix:x",
            *_burn_rates("ttft_slow", TTFT_BUDGET),
            traffic=False,  # the rules are evaluated on their own schedule
            decimals=2,
            thresholds=_BURN_COLOURS,
        ),
        Row("Golden signals"),
        graph(
            "Request rate by route and status",
            "HTTP requests answered (probes and scrapes left out).",
            "reqps",
            Target(
                per_second("axon_http_requests_total", API, by="route, status"),
                "{{route}} {{status}}",
            ),
            traffic=True,
            stacked=True,
        ),
        graph(
            "Latency to response headers",
            "A stream's headers leave at once; its tokens follow (see the turn dashboard).",
            "s",
            *quantiles("axon_http_request_duration_seconds", API),
            traffic=True,
        ),
        graph(
            "Server error ratio",
            "Share of requests answered with a 5xx status.",
            "percentunit",
            Target(
                share(
                    per_second("axon_http_requests_total", API, 'status=~"5.."'),
                    per_second("axon_http_requests_total", API),
                ),
                "5xx",
            ),
            traffic=True,
            width=8,
        ),
        graph(
            "Turns by outcome",
            "Chat turns that ended: ok, cancelled, error (server-side), abandoned (the "
            "client left).",
            "ops",
            Target(per_second("axon_turns_total", MODEL, by="outcome"), "{{outcome}}"),
            traffic=True,
            width=8,
            stacked=True,
        ),
        graph(
            "Errors answered by code",
            "Errors sent to clients, by stable error code.",
            "ops",
            Target(per_second("axon_errors_total", by="code"), "{{code}}"),
            traffic=False,
            width=8,
        ),
        Row("Saturation"),
        graph(
            "Open client streams",
            "Streamed replies each process is serving now.",
            "short",
            Target("sum by (instance) (axon_open_client_streams)", "{{instance}}"),
            traffic=True,
            width=8,
        ),
        graph(
            "Worker sequences: running and capacity",
            "Jobs running on all workers, against how many they can run at once.",
            "short",
            Target(f"sum(axon_worker_running_sequences{{{MODEL}}})", "running"),
            Target(f"sum(axon_worker_capacity_sequences{{{MODEL}}})", "capacity"),
            traffic=True,
            width=8,
        ),
        graph(
            "Queue depth",
            "Jobs waiting in each model's queue, as the broker reports it.",
            "short",
            Target(f"max by (model) (axon_queue_depth_jobs{{{MODEL}}})", "{{model}}"),
            traffic=True,
            width=8,
        ),
        graph(
            "Requests refused at admission",
            "Shed because a queue was too deep or too slow, or over a rate limit.",
            "ops",
            Target(per_second("axon_shed_total", by="reason"), "shed: {{reason}}"),
            Target(per_second("axon_rate_limited_total", by="limit"), "rate limited: {{limit}}"),
            traffic=False,
        ),
        graph(
            "Cancellations by cause",
            "Replies stopped before their end: by the client, a deadline, or a queue wait "
            "over its limit.",
            "ops",
            Target(per_second("axon_cancellations_total", by="cause"), "{{cause}}"),
            traffic=False,
        ),
        Row("Processes"),
        Panel(
            "Running versions",
            "Processes by role, version, engine and model.",
            "short",
            (
                Target(
                    f"count by (role, version, engine, model) (axon_build_info{{{MODEL}}})",
                    "",
                ),
            ),
            traffic=True,
            kind="table",
            width=24,
            height=6,
            instant=True,
        ),
    ),
)

_STAGE = "axon_turn_stage_duration_seconds"
_GEN_AI_TTFT = "gen_ai_server_time_to_first_token_seconds"
_GEN_AI_DURATION = "gen_ai_server_request_duration_seconds"

TURN_LATENCY = Dashboard(
    "axon-turn-latency",
    "Axon / Turn latency by stage",
    "Where a turn spends its time: admission, queue wait, prefill, decode, store, relay.",
    (
        Row("As the client sees it"),
        graph(
            "Time to first token",
            "From queueing a turn to relaying its first token (the SLO's measure).",
            "s",
            *quantiles(_TTFT, MODEL),
            traffic=True,
        ),
        graph(
            "Turns with a first token within 2.5 s",
            "The time-to-first-token SLO's good events as a share of all, per interval.",
            "percentunit",
            Target(
                f"{per_second(_TTFT + '_bucket', _WITHIN_THRESHOLD, MODEL)}"
                f" / {per_second(_TTFT + '_count', MODEL)}",
                "within 2.5 s",
            ),
            traffic=True,
        ),
        Row("Stages"),
        graph(
            "Mean time per stage",
            "A turn's path, stacked: admit (request to job queued), queue wait (queued to "
            "a worker's start), prefill (start to first token), decode (first token to "
            "final event), store (writing the reply); relay is per token batch (worker "
            "append to client write).",
            "s",
            Target(mean(_STAGE, 'stage="admit"', MODEL), "admit"),
            Target(mean("axon_job_queue_wait_seconds", MODEL), "queue wait"),
            Target(mean(_GEN_AI_TTFT, GEN_AI_MODEL), "prefill"),
            Target(mean(_STAGE, 'stage="decode"', MODEL), "decode"),
            Target(mean(_STAGE, 'stage="store"', MODEL), "store"),
            Target(mean("axon_stream_relay_lag_seconds"), "relay"),
            traffic=True,
            width=8,
            stacked=True,
        ),
        graph(
            "Stage duration p50",
            "Median time in the stages measured as such (admit, decode, store).",
            "s",
            Target(quantile(0.5, _STAGE, MODEL, by="stage"), "{{stage}}"),
            traffic=True,
            width=8,
        ),
        graph(
            "Stage duration p95",
            "95th percentile of the time in the stages measured as such.",
            "s",
            Target(quantile(0.95, _STAGE, MODEL, by="stage"), "{{stage}}"),
            traffic=True,
            width=8,
        ),
        graph(
            "Queue wait",
            "Time a job waited in the queue before a worker started its first attempt.",
            "s",
            *quantiles("axon_job_queue_wait_seconds", MODEL),
            traffic=True,
        ),
        graph(
            "Stream relay lag",
            "From a worker appending a token batch to the session manager handing it to "
            "the client's connection.",
            "s",
            *quantiles("axon_stream_relay_lag_seconds"),
            traffic=True,
        ),
        Row("On the worker"),
        graph(
            "Worker time to first token",
            "From a job's start on a worker to its first output token (prefill).",
            "s",
            *quantiles(_GEN_AI_TTFT, GEN_AI_MODEL),
            traffic=True,
            width=8,
        ),
        graph(
            "Time per output token",
            "Mean time per output token after the first, per request (decode speed).",
            "s",
            *quantiles("gen_ai_server_time_per_output_token_seconds", GEN_AI_MODEL),
            traffic=True,
            width=8,
        ),
        graph(
            "Worker request duration by finish reason",
            "Time a worker spent on one job, start to final event.",
            "s",
            Target(
                quantile(0.5, _GEN_AI_DURATION, GEN_AI_MODEL, by="finish_reason"),
                "p50 {{finish_reason}}",
            ),
            Target(
                quantile(0.95, _GEN_AI_DURATION, GEN_AI_MODEL, by="finish_reason"),
                "p95 {{finish_reason}}",
            ),
            traffic=True,
            width=8,
        ),
    ),
)

_TOKENS = "tokens/s"

WORKERS = Dashboard(
    "axon-workers",
    "Axon / Workers and engines",
    "Worker capacity, engine batches and KV cache, token throughput, and process resources.",
    (
        Row("Capacity"),
        graph(
            "Worker sequences: running and capacity",
            "Jobs workers run now, against how many they can run at once, by model.",
            "short",
            Target(
                f"sum by (model) (axon_worker_running_sequences{{{MODEL}}})", "running {{model}}"
            ),
            Target(
                f"sum by (model) (axon_worker_capacity_sequences{{{MODEL}}})", "capacity {{model}}"
            ),
            traffic=True,
            width=8,
        ),
        graph(
            "Engine sequences: running and waiting",
            "Sequences the engines decode now, and those accepted but not decoding yet.",
            "short",
            Target(
                f"sum by (model) (axon_engine_running_sequences{{{MODEL}}})", "running {{model}}"
            ),
            Target(
                f"sum by (model) (axon_engine_waiting_sequences{{{MODEL}}})", "waiting {{model}}"
            ),
            traffic=True,
            width=8,
        ),
        graph(
            "KV cache usage",
            "Share of each engine's KV cache in use.",
            "percentunit",
            Target(
                f"max by (instance, model) (axon_engine_kv_cache_usage_ratio{{{MODEL}}})",
                "{{instance}} {{model}}",
            ),
            traffic=True,
            width=8,
        ),
        Row("Throughput"),
        graph(
            "Tokens per second",
            "Prompt tokens processed (cached prefix included) and output tokens generated.",
            "short",
            Target(per_second("axon_prompt_tokens_total", MODEL, by="model"), "prompt {{model}}"),
            Target(
                per_second("axon_generation_tokens_total", MODEL, by="model"), "output {{model}}"
            ),
            traffic=True,
            axis_label=_TOKENS,
        ),
        graph(
            "Jobs finished by outcome",
            "Jobs workers settled: stop, length, cancelled, error, retried, dead, handed "
            "back, fenced, duplicate.",
            "ops",
            Target(per_second("axon_jobs_finished_total", MODEL, by="outcome"), "{{outcome}}"),
            traffic=True,
            stacked=True,
        ),
        graph(
            "Tokens per request",
            "Prompt (input) and reply (output) tokens of each request.",
            "short",
            Target(
                quantile(0.5, "gen_ai_client_token_usage", GEN_AI_MODEL, by="gen_ai_token_type"),
                "p50 {{gen_ai_token_type}}",
            ),
            Target(
                quantile(0.95, "gen_ai_client_token_usage", GEN_AI_MODEL, by="gen_ai_token_type"),
                "p95 {{gen_ai_token_type}}",
            ),
            traffic=True,
            width=8,
        ),
        graph(
            "Prefix cache hit ratio",
            "Share of prompt tokens found in the engines' prefix cache (not computed again).",
            "percentunit",
            Target(
                share(
                    per_second("axon_prefix_cache_hits_tokens_total", MODEL),
                    per_second("axon_prefix_cache_queries_tokens_total", MODEL),
                ),
                "hit ratio",
            ),
            traffic=True,
            width=8,
        ),
        graph(
            "Worker utilisation",
            "Running jobs as a share of capacity, by model.",
            "percentunit",
            Target(
                f"sum by (model) (axon_worker_running_sequences{{{MODEL}}})"
                f" / sum by (model) (axon_worker_capacity_sequences{{{MODEL}}})",
                "{{model}}",
            ),
            traffic=True,
            width=8,
        ),
        Row("Engine steps"),
        graph(
            "Engine step time",
            "Time of one engine step (one batched forward pass).",
            "s",
            *quantiles("axon_engine_step_duration_seconds", MODEL),
            traffic=True,
        ),
        graph(
            "Batch size",
            "Sequences decoded together in one engine step.",
            "short",
            Target(mean("axon_engine_batch_size_sequences", MODEL), "mean"),
            *quantiles("axon_engine_batch_size_sequences", MODEL, qs=(0.5, 0.95)),
            traffic=True,
        ),
        Row("Processes"),
        graph(
            "CPU by job",
            "CPU time per second, by scrape job (1 is one core busy).",
            "short",
            Target(per_second("process_cpu_seconds_total", by="job"), "{{job}}"),
            traffic=True,
            axis_label="cores",
        ),
        graph(
            "Resident memory by job",
            "Resident memory of the processes of each scrape job.",
            "bytes",
            Target("sum by (job) (process_resident_memory_bytes)", "{{job}}"),
            traffic=True,
        ),
    ),
)

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

DASHBOARDS = (OVERVIEW, TURN_LATENCY, WORKERS, QUEUE, DATASTORES)


# -- JSON -----------------------------------------------------------------------------------

GRID_WIDTH = 24
_MODEL_QUERY = "label_values(axon_build_info, model)"
_MODEL_VARIABLE: dict[str, Any] = {
    "allValue": ".*",
    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    "datasource": DATASOURCE,
    "definition": _MODEL_QUERY,
    "hide": 0,
    "includeAll": True,
    "label": "Model",
    "multi": True,
    "name": "model",
    "options": [],
    "query": {
        "qryType": 1,
        "query": _MODEL_QUERY,
        "refId": "PrometheusVariableQueryEditor-VariableQuery",
    },
    "refresh": 2,  # on time range change: a new worker's model appears
    "regex": "",
    "skipUrlSync": False,
    "sort": 1,
    "type": "query",
}


def _target_json(target: Target, ref: str, panel: Panel) -> dict[str, Any]:
    out: dict[str, Any] = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": target.expr,
        "instant": panel.instant,
        "legendFormat": target.legend,
        "range": not panel.instant,
        "refId": ref,
    }
    if panel.kind == "table":
        out["format"] = "table"
    return out


def _field_defaults(panel: Panel) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "color": {"mode": "thresholds" if panel.kind == "stat" else "palette-classic"},
        "mappings": [],
        "thresholds": {
            "mode": "absolute",
            "steps": [{"color": colour, "value": value} for value, colour in panel.thresholds],
        },
        "unit": panel.unit,
    }
    if panel.decimals is not None:
        defaults["decimals"] = panel.decimals
    if panel.kind == "timeseries":
        defaults["min"] = 0
        defaults["custom"] = {
            "axisLabel": panel.axis_label,
            "drawStyle": "line",
            "fillOpacity": 30 if panel.stacked else 10,
            "lineWidth": 1,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "normal" if panel.stacked else "none"},
        }
    return defaults


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "stat":
        return {
            "colorMode": "value",
            "graphMode": "none" if panel.instant else "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "textMode": "auto",
        }
    if panel.kind == "table":
        return {"cellHeight": "sm", "showHeader": True}
    return {
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def _panel_json(panel: Panel, panel_id: int, grid: dict[str, int]) -> dict[str, Any]:
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out: dict[str, Any] = {
        "datasource": DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": _field_defaults(panel), "overrides": []},
        "gridPos": grid,
        "id": panel_id,
        "options": _options(panel),
        "targets": [_target_json(t, refs[i], panel) for i, t in enumerate(panel.targets)],
        "title": panel.title,
        "type": panel.kind,
    }
    if panel.kind == "table":
        # One row per label set; the time column says nothing in an instant table.
        out["transformations"] = [
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "renameByName": {"Value": "processes"},
                },
            }
        ]
    return out


def _row_json(row: Row, panel_id: int, y: int) -> dict[str, Any]:
    return {
        "collapsed": False,
        "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
        "id": panel_id,
        "panels": [],
        "title": row.title,
        "type": "row",
    }


def _panels_json(items: tuple[Panel | Row, ...]) -> list[dict[str, Any]]:
    """Lay the items out left to right, wrapping at the grid's width; a row starts a line."""
    out: list[dict[str, Any]] = []
    x = y = line_height = 0
    for panel_id, item in enumerate(items, start=1):
        if isinstance(item, Row) or x + item.width > GRID_WIDTH:
            x, y, line_height = 0, y + line_height, 0
        if isinstance(item, Row):
            out.append(_row_json(item, panel_id, y))
            y += 1
            continue
        grid = {"h": item.height, "w": item.width, "x": x, "y": y}
        out.append(_panel_json(item, panel_id, grid))
        x += item.width
        line_height = max(line_height, item.height)
    return out


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": dashboard.description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,  # a shared crosshair: stages line up in time across panels
        "id": None,
        "links": [
            {
                "asDropdown": True,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": ["axon"],
                "targetBlank": False,
                "title": "Axon dashboards",
                "type": "dashboards",
            }
        ],
        "panels": _panels_json(dashboard.items),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["axon"],
        "templating": {"list": [_MODEL_VARIABLE]},
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": dashboard.title,
        "uid": dashboard.uid,
        "version": 1,
        "weekStart": "",
    }


def build() -> dict[str, dict[str, Any]]:
    """Every dashboard's JSON, by file name."""
    return {d.file: dashboard_json(d) for d in DASHBOARDS}


def queries() -> list[Query]:
    """Every panel query, with whether ordinary traffic must give it data."""
    return [
        Query(d.file, item.title, target.expr, item.traffic)
        for d in DASHBOARDS
        for item in d.items
        if isinstance(item, Panel)
        for target in item.targets
    ]


def dumps(dashboard: dict[str, Any]) -> str:
    """A dashboard file's text: stable, so that a regenerated file diffs cleanly."""
    return json.dumps(dashboard, indent=2, sort_keys=True) + "\n"


def main() -> None:
    OUTPUT.mkdir(exist_ok=True)
    for name, dashboard in build().items():
        (OUTPUT / name).write_text(dumps(dashboard))
        print(f"wrote {OUTPUT / name}")


if __name__ == "__main__":
    main()
