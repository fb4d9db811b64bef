"""Workers and engines: capacity, token throughput, engine steps, process resources."""

from __future__ import annotations

from source.panels import Dashboard, Row, Target, graph, quantiles
from source.promql import GEN_AI_MODEL, MODEL, mean, per_second, quantile, share

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
