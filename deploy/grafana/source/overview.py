"""The service overview: the SLOs and their error budgets, golden signals, saturation."""

from __future__ import annotations

from source.panels import Dashboard, Panel, Row, Target, Thresholds, graph, quantiles, stat
from source.promql import (
    API,
    AVAILABILITY_BUDGET,
    BURN_WINDOWS,
    MODEL,
    SLO_PERIOD,
    TTFT,
    TTFT_BUDGET,
    WITHIN_TTFT_THRESHOLD,
    per_second,
    selector,
    share,
)

_AVAILABILITY_BAD = f'sum(increase(axon_turns_total{{outcome="error", {MODEL}}}[{SLO_PERIOD}]))'
_AVAILABILITY_VALID = (
    f'sum(increase(axon_turns_total{{outcome!="abandoned", {MODEL}}}[{SLO_PERIOD}]))'
)
_TTFT_GOOD = (
    f"sum(increase({selector(TTFT + '_bucket', WITHIN_TTFT_THRESHOLD, MODEL)}[{SLO_PERIOD}]))"
)
_TTFT_VALID = f"sum(increase({TTFT}_count{{{MODEL}}}[{SLO_PERIOD}]))"
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
