"""The inputs of the capacity plan (`benchmarks/capacity.py`), each kept apart and named for
what it is: the costs MEASURED by `benchmarks/role_cost.py`, the engine's throughput per GPU
PUBLISHED by vLLM, and the workload and planning rules ASSUMED (flags with defaults), with the
published sizes of the instance families the Terraform uses."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RoleCost:
    """What one process of a role spends (one Python event loop: at most one core)."""

    #: CPU milliseconds per chat turn, apart from its tokens.
    cpu_ms_per_turn: float
    #: CPU seconds per 1,000 relayed reply tokens.
    cpu_s_per_1k_tokens: float
    #: Resident memory with nothing to do, MiB.
    rss_mib_idle: float
    #: Resident memory per open stream, KiB.
    rss_kib_per_stream: float


@dataclass(frozen=True)
class Measured:
    """Costs measured by `benchmarks/role_cost.py` through the session API (the path of a
    conversation: PostgreSQL, the Redis session cache, RabbitMQ, Redis token streams)."""

    date: str
    machine: str
    command: str
    #: Tokens/s of each stream during the measurement (the `fake` engine's speed).
    stream_tokens_per_s: float
    gateway: RoleCost
    session_manager: RoleCost
    #: The worker's own work; the `fake` engine's CPU is in these figures too (below).
    worker: RoleCost
    fake_engine_s_per_1k_tokens: float
    #: Tokens per stream entry in the measurement: the worker sends tokens in batches
    #: (AXON_STREAM__BATCH_INTERVAL_MS), and most per-token costs are per entry.
    tokens_per_entry: float
    #: Redis's CPU (its command thread) per turn and per 1,000 tokens.
    redis_cpu_ms_per_turn: float
    redis_cpu_s_per_1k_tokens: float
    redis_commands_per_turn: float
    redis_commands_per_1k_tokens: float
    #: Redis memory and client connections per stream held open.
    redis_bytes_per_open_stream: float
    redis_clients_per_open_stream: float
    #: A finished reply's token stream (kept AXON_STREAM__TTL_S for re-attach).
    redis_stream_bytes_fixed: float
    redis_stream_bytes_per_token: float
    #: A message in the session cache, beyond its text.
    redis_cache_bytes_per_message: float
    #: An entry of the completions log (MAXLEN 100,000), beyond the reply's text.
    redis_completion_bytes: float
    pg_commits_per_turn: float
    pg_rows_per_turn: float
    #: CPU of this database's PostgreSQL backends per turn.
    pg_cpu_ms_per_turn: float
    #: A stored message (row, indexes), beyond its text.
    pg_bytes_per_message: float
    #: CPU of the whole RabbitMQ node per turn (shared with anything else it served
    #: during the run: an upper bound).
    rabbitmq_cpu_ms_per_turn: float


# Measured on 2026-12-02 (the machine's clock) on 2 cores, Intel(R) Xeon(R) Processor
# (KVM), Python 3.11.7, with `python benchmarks/capacity.py --measure` (that is,
# benchmarks/role_cost.py at 70 tokens/s per stream): one gateway, one session manager and
# one worker (`fake` engine) from `axon up`, a private Redis 7.0 and RabbitMQ 3.10 node, the
# local PostgreSQL 15, and the load generator on the same two cores. Two runs in a row
# agreed within 10 % on the per-token figures and 20 % on the roles' per-turn ones.
MEASURED = Measured(
    date="2026-12-02",
    machine="2 cores, Intel(R) Xeon(R) Processor, Python 3.11.7",
    command="python benchmarks/capacity.py --measure",
    stream_tokens_per_s=70.0,
    gateway=RoleCost(
        cpu_ms_per_turn=4.356,
        cpu_s_per_1k_tokens=0.0812,
        rss_mib_idle=104.8,
        rss_kib_per_stream=5.3,
    ),
    session_manager=RoleCost(
        cpu_ms_per_turn=17.804,
        cpu_s_per_1k_tokens=0.1601,
        rss_mib_idle=102.5,
        rss_kib_per_stream=24.2,
    ),
    worker=RoleCost(
        cpu_ms_per_turn=1.96, cpu_s_per_1k_tokens=0.209, rss_mib_idle=88.2, rss_kib_per_stream=113.2
    ),
    fake_engine_s_per_1k_tokens=0.036,
    tokens_per_entry=2.99,
    redis_cpu_ms_per_turn=0.241,
    redis_cpu_s_per_1k_tokens=0.0551,
    redis_commands_per_turn=48.9,
    redis_commands_per_1k_tokens=2818.2,
    redis_bytes_per_open_stream=59195,
    redis_clients_per_open_stream=2.33,
    redis_stream_bytes_fixed=988,
    redis_stream_bytes_per_token=82.8,
    redis_cache_bytes_per_message=551,
    redis_completion_bytes=461,
    pg_commits_per_turn=5.17,
    pg_rows_per_turn=4.92,
    pg_cpu_ms_per_turn=2.005,
    pg_bytes_per_message=768,
    rabbitmq_cpu_ms_per_turn=1.541,
)


@dataclass(frozen=True)
class Engine:
    """PUBLISHED, not measured here: what one GPU of the engine serves."""

    source: str
    model: str
    gpu: str
    #: Output tokens/s per GPU at the planned operating point (latency still flat).
    output_tok_s: float
    #: Output tokens/s per GPU when saturated (every request queued at once).
    max_output_tok_s: float
    #: Time to first token and per output token at the planned point, and saturated.
    ttft_s: float
    tpot_s: float
    saturated_tpot_s: float
    #: Requests/s per GPU at the planned point (for the worker's concurrency).
    requests_per_s: float


# vLLM v0.6.0, Llama 3 8B on one H100 (80 GB), ShareGPT (500 prompts, 202 input and 179
# output tokens on average), --num-scheduler-steps 10: "vLLM v0.6.0: 2.7x Throughput
# Improvement and 5x Latency Reduction", vLLM blog, 2024-09-05
# (https://blog.vllm.ai/2024/09/05/perf-update.html, figures H100_8B and
# overall_throughput). Read off the published charts (about +-5 %): at 32 requests/s
# offered, TTFT under 0.1 s and TPOT about 14 ms, so 32 x 179 = 5,728 output tokens/s;
# with every request sent at once, 37 requests/s (6,623 output tokens/s) at TPOT about
# 55-60 ms and TTFT about 2.6 s.
VLLM_H100_LLAMA3_8B = Engine(
    source="vLLM blog 2024-09-05 (v0.6.0), read off its charts",
    model="Llama 3 8B",
    gpu="1x H100 80GB",
    output_tok_s=32 * 179,
    max_output_tok_s=37 * 179,
    ttft_s=0.1,
    tpot_s=0.014,
    saturated_tpot_s=0.058,
    requests_per_s=32.0,
)


@dataclass(frozen=True)
class Workload:
    """ASSUMED: what a conversation asks of the system."""

    #: Turns a conversation sends per minute (reading the reply and typing the next one).
    turns_per_minute: float = 1.0
    #: Reply length; ShareGPT's mean (179) keeps the published GPU figure applicable.
    reply_tokens: int = 180
    #: The user's new message.
    user_tokens: int = 60
    #: The whole prompt a job carries (history and new message); the engine's prefix
    #: cache is assumed to spare re-reading the history, as in the published figure.
    prompt_tokens: int = 1000
    #: How long a conversation stays active; it stays cached AXON_STORE__CACHE_TTL_S more.
    conversation_minutes: float = 20.0
    chars_per_token: float = 4.0


@dataclass(frozen=True)
class Rules:
    """ASSUMED: how the plan turns load into machines (Axon's defaults where they apply)."""

    zones: int = 2
    #: Share of a process's one core a plan fills (room for bursts and a lost replica).
    target_utilisation: float = 0.65
    #: AXON_GATEWAY__UPSTREAM_POOL_SIZE: streams one gateway carries at most.
    gateway_streams: int = 200
    #: AXON_BACKENDS__REDIS_MAX_CONNECTIONS: waiting relays one session manager holds.
    session_manager_streams: int = 2000
    #: AXON_STREAM__TTL_S, AXON_STORE__CACHE_TTL_S, AXON_STORE__HISTORY_MESSAGES.
    stream_ttl_s: float = 600.0
    cache_ttl_s: float = 3600.0
    history_messages: int = 64
    #: Entries the completions log keeps (RedisStreams' completions_maxlen).
    completions_kept: int = 100_000
    #: AXON_LIMITS__MAX_QUEUE_DEPTH: jobs a model's queue holds before requests are shed.
    max_queue_depth: int = 256
    #: Redis memory beyond the data (fragmentation, buffers, replication backlog).
    redis_memory_overhead: float = 1.5
    #: A job's bytes beyond its prompt text (sampling, trace context, ids).
    job_bytes_fixed: int = 1024
    #: Extra share of CPU roles and GPUs for the degraded zone-outage option.
    zone_headroom: float = 0.5
    #: AXON_STREAM__BATCH_INTERVAL_MS and __BATCH_MAX_TOKENS: how tokens become entries.
    batch_interval_ms: float = 20.0
    batch_max_tokens: int = 16


# AWS's published sizes (memory GiB, vCPUs) of the instance families the Terraform uses.
REDIS_NODES = [
    ("cache.r7g.large", 13.07),
    ("cache.r7g.xlarge", 26.32),
    ("cache.r7g.2xlarge", 52.82),
    ("cache.r7g.4xlarge", 105.81),
    ("cache.r7g.8xlarge", 209.55),
]
PG_NODES = [
    ("db.r7g.large", 2),
    ("db.r7g.xlarge", 4),
    ("db.r7g.2xlarge", 8),
    ("db.r7g.4xlarge", 16),
    ("db.r7g.8xlarge", 32),
    ("db.r7g.16xlarge", 64),
]
MQ_NODES = [
    ("mq.m5.large", 2),
    ("mq.m5.xlarge", 4),
    ("mq.m5.2xlarge", 8),
    ("mq.m5.4xlarge", 16),
]
SIZES = (1_000, 10_000, 100_000)
