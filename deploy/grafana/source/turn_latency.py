"""Turn latency by stage: where a turn spends its time, from the client to the engine."""

from __future__ import annotations

from source.panels import Dashboard, Row, Target, graph, quantiles
from source.promql import (
    GEN_AI_MODEL,
    MODEL,
    TTFT,
    WITHIN_TTFT_THRESHOLD,
    mean,
    per_second,
    quantile,
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
            *quantiles(TTFT, MODEL),
            traffic=True,
        ),
        graph(
            "Turns with a first token within 2.5 s",
            "The time-to-first-token SLO's good events as a share of all, per interval.",
            "percentunit",
            Target(
                f"{per_second(TTFT + '_bucket', WITHIN_TTFT_THRESHOLD, MODEL)}"
                f" / {per_second(TTFT + '_count', MODEL)}",
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
