"""The capacity plan's arithmetic: the replicas, GPUs and datastore nodes a load needs, how
far each part is from saturating, and what surviving a zone outage costs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from capacity_inputs import (
    MQ_NODES,
    PG_NODES,
    REDIS_NODES,
    Engine,
    Measured,
    RoleCost,
    Rules,
    Workload,
)


@dataclass
class Part:
    """One sized part of the plan and how far it is from saturating."""

    name: str
    #: Replicas (CPU roles, GPUs) or the node chosen (datastores).
    size: str
    #: Capacity of the plan over the load: 1.0 means saturated.
    headroom: float


@dataclass
class Plan:
    conversations: int
    turns_s: float
    tokens_s: float
    reply_s: float
    open_streams: float
    #: Cores of load of the gateways and of the session managers.
    gateway_cores: float
    session_manager_cores: float
    #: Gateways, session managers and GPUs the load needs, before one per zone.
    needed: tuple[int, int, int]
    gateways: int
    session_managers: int
    gpus: int
    worker_capacity: int
    worker_cores_per_gpu: float
    gateway_mib: float
    session_manager_mib: float
    redis_gib: float
    redis_ops_s: float
    redis_core: float
    #: Primaries the command-thread load needs at the target utilisation (Axon uses one).
    redis_primaries: int
    redis_clients: float
    pg_commits_s: float
    pg_node: str
    pg_vcpu: float
    pg_gib_day: float
    mq_publish_s: float
    mq_mib_s: float
    mq_core: float
    mq_node: str
    parts: list[Part]

    @property
    def first(self) -> Part:
        return min(self.parts, key=lambda p: p.headroom)


def _replicas(load: float, per_replica: float) -> int:
    """Replicas that carry ``load`` at ``per_replica`` each (at least one)."""
    return max(1, math.ceil(load / per_replica - 1e-9))


def _node(ladder: Sequence[tuple[str, float]], need: float) -> tuple[str, float]:
    for name, size in ladder:
        if size >= need:
            return name, size
    return f"{ladder[-1][0]} (beyond: shard)", ladder[-1][1]


def tokens_per_entry(tokens_per_s: float, r: Rules) -> int:
    """Tokens in one stream entry of a stream at ``tokens_per_s``: the worker sends a batch
    when a token arrives ``batch_interval_ms`` or more after the batch's first one."""
    interval_tokens = r.batch_interval_ms / 1000 * tokens_per_s
    return min(r.batch_max_tokens, math.ceil(interval_tokens - 1e-9) + 1)


def per_entry(m: Measured, entries: int) -> Measured:
    """``m`` with its per-token costs moved to ``entries`` tokens per entry: the relay's,
    Redis's and the worker's work per token is mostly work per entry (a script call, a
    read, an SSE event), so it shrinks as entries carry more tokens."""
    k = m.tokens_per_entry / entries

    def scaled(c: RoleCost, engine: float = 0.0) -> RoleCost:
        return replace(c, cpu_s_per_1k_tokens=engine + (c.cpu_s_per_1k_tokens - engine) * k)

    return replace(
        m,
        tokens_per_entry=entries,
        gateway=scaled(m.gateway),
        session_manager=scaled(m.session_manager),
        # The engine's own cost is per token whatever the batching.
        worker=scaled(m.worker, m.fake_engine_s_per_1k_tokens),
        redis_cpu_s_per_1k_tokens=m.redis_cpu_s_per_1k_tokens * k,
        redis_commands_per_1k_tokens=m.redis_commands_per_1k_tokens * k,
        redis_stream_bytes_per_token=m.redis_stream_bytes_per_token * k,
    )


def role_cores(cost: RoleCost, turns_s: float, tokens_s: float) -> float:
    """Cores a role spends on ``turns_s`` turns/s with ``tokens_s`` reply tokens/s."""
    return turns_s * cost.cpu_ms_per_turn / 1000 + tokens_s * cost.cpu_s_per_1k_tokens / 1000


def plan(conversations: int, m: Measured, engine: Engine, w: Workload, r: Rules) -> Plan:
    m = per_entry(m, tokens_per_entry(1 / engine.tpot_s, r))
    turns_s = conversations * w.turns_per_minute / 60
    tokens_s = turns_s * w.reply_tokens
    reply_s = engine.ttft_s + w.reply_tokens * engine.tpot_s
    # Little's law: streams open at once = turns started per second x how long each lasts.
    streams = turns_s * reply_s
    u = r.target_utilisation

    gw_cores = role_cores(m.gateway, turns_s, tokens_s)
    sm_cores = role_cores(m.session_manager, turns_s, tokens_s)
    # What the load needs, then at least one of each in every zone.
    needed = (
        max(_replicas(gw_cores, u), _replicas(streams, r.gateway_streams * u)),
        max(_replicas(sm_cores, u), _replicas(streams, r.session_manager_streams * u)),
        _replicas(tokens_s, engine.output_tok_s),
    )
    gateways, managers, gpus = (max(r.zones, n) for n in needed)
    # The worker process beside each GPU: Axon's own work, the `fake` engine's taken out.
    engine_free = replace(
        m.worker,
        cpu_s_per_1k_tokens=max(0.0, m.worker.cpu_s_per_1k_tokens - m.fake_engine_s_per_1k_tokens),
    )
    worker_cores = role_cores(engine_free, turns_s / gpus, tokens_s / gpus)
    worker_capacity = math.ceil(engine.requests_per_s * reply_s * 1.25)

    # Redis: open streams, finished streams kept for re-attach, the session cache, the
    # completions log.
    stream_bytes = m.redis_stream_bytes_fixed + m.redis_stream_bytes_per_token * w.reply_tokens
    turns_per_conversation = w.turns_per_minute * w.conversation_minutes
    cached_sessions = conversations * (1 + r.cache_ttl_s / 60 / w.conversation_minutes)
    cached_messages = min(r.history_messages, 2 * turns_per_conversation)
    message_chars = (w.user_tokens + w.reply_tokens) / 2 * w.chars_per_token
    redis_bytes = (
        streams * m.redis_bytes_per_open_stream
        + turns_s * r.stream_ttl_s * stream_bytes
        + cached_sessions * cached_messages * (m.redis_cache_bytes_per_message + message_chars)
        + r.completions_kept * (m.redis_completion_bytes + w.reply_tokens * w.chars_per_token)
    ) * r.redis_memory_overhead
    redis_gib = redis_bytes / 2**30
    redis_ops = (
        turns_s * m.redis_commands_per_turn + tokens_s * m.redis_commands_per_1k_tokens / 1000
    )
    redis_core = (
        turns_s * m.redis_cpu_ms_per_turn / 1000 + tokens_s * m.redis_cpu_s_per_1k_tokens / 1000
    )
    redis_node, redis_node_gib = _node(REDIS_NODES, redis_gib)

    pg_cores = turns_s * m.pg_cpu_ms_per_turn / 1000
    pg_node, pg_vcpu = _node(PG_NODES, max(pg_cores / u, 2))
    message_bytes = (
        2 * m.pg_bytes_per_message + (w.user_tokens + w.reply_tokens) * w.chars_per_token
    )
    pg_gib_day = turns_s * 86_400 * message_bytes / 2**30

    job_bytes = w.prompt_tokens * w.chars_per_token + r.job_bytes_fixed
    mq_core = turns_s * m.rabbitmq_cpu_ms_per_turn / 1000
    mq_node, _ = _node(MQ_NODES, max(mq_core / u, 2))

    parts = [
        Part(
            "gateways",
            str(gateways),
            min(gateways / gw_cores, gateways * r.gateway_streams / streams),
        ),
        Part(
            "session managers",
            str(managers),
            min(managers / sm_cores, managers * r.session_manager_streams / streams),
        ),
        Part(f"GPUs ({engine.gpu})", str(gpus), gpus * engine.max_output_tok_s / tokens_s),
        # One Python event loop beside each GPU relays all of that GPU's tokens.
        Part(
            "worker process (one per GPU)",
            f"{worker_cores:.2f} core",
            1 / worker_cores if worker_cores else math.inf,
        ),
        # Axon talks to one Redis primary, which runs commands on one thread.
        Part(
            "Redis primary (one command thread)",
            redis_node,
            min(1 / redis_core if redis_core else math.inf, redis_node_gib / redis_gib),
        ),
        Part("PostgreSQL primary", pg_node, pg_vcpu / pg_cores if pg_cores else math.inf),
        # A queue's leader runs on one core of one node; the node's whole CPU per turn is
        # counted as the leader's (conservative).
        Part(
            "RabbitMQ (one quorum queue per model)",
            mq_node,
            1 / mq_core if mq_core else math.inf,
        ),
    ]
    return Plan(
        conversations=conversations,
        turns_s=turns_s,
        tokens_s=tokens_s,
        reply_s=reply_s,
        open_streams=streams,
        gateway_cores=gw_cores,
        session_manager_cores=sm_cores,
        needed=needed,
        gateways=gateways,
        session_managers=managers,
        gpus=gpus,
        worker_capacity=worker_capacity,
        worker_cores_per_gpu=worker_cores,
        gateway_mib=m.gateway.rss_mib_idle
        + streams / gateways * m.gateway.rss_kib_per_stream / 1024,
        session_manager_mib=m.session_manager.rss_mib_idle
        + streams / managers * m.session_manager.rss_kib_per_stream / 1024,
        redis_gib=redis_gib,
        redis_ops_s=redis_ops,
        redis_core=redis_core,
        redis_primaries=max(1, math.ceil(redis_core / u - 1e-9)),
        redis_clients=streams * m.redis_clients_per_open_stream + 2 * (gateways + managers + gpus),
        pg_commits_s=turns_s * m.pg_commits_per_turn,
        pg_node=pg_node,
        pg_vcpu=pg_vcpu,
        pg_gib_day=pg_gib_day,
        mq_publish_s=turns_s,
        mq_mib_s=turns_s * job_bytes / 2**20,
        mq_core=mq_core,
        mq_node=mq_node,
        parts=parts,
    )


@dataclass
class ZoneOutage:
    """The two ways of surviving the loss of one of the zones."""

    #: Each zone carries the whole load: gateways, session managers, GPUs in total.
    full: tuple[int, int, int]
    #: N + headroom, spread evenly over the zones: gateways, session managers, GPUs.
    degraded: tuple[int, int, int]
    #: During an outage at N + headroom: the busier CPU role's utilisation, and the GPUs'
    #: load as a share of their saturated throughput (above 1, the excess is shed).
    degraded_cpu: float
    degraded_gpu: float


def zone_outage(p: Plan, engine: Engine, r: Rules) -> ZoneOutage:
    def spread(n: int) -> int:
        total = math.ceil(n * (1 + r.zone_headroom) - 1e-9)
        return max(r.zones, math.ceil(total / r.zones) * r.zones)

    gateways, managers, gpus = (spread(n) for n in p.needed)
    left = (r.zones - 1) / r.zones
    cpu = max(p.gateway_cores / (gateways * left), p.session_manager_cores / (managers * left))
    return ZoneOutage(
        full=(r.zones * p.needed[0], r.zones * p.needed[1], r.zones * p.needed[2]),
        degraded=(gateways, managers, gpus),
        degraded_cpu=cpu,
        degraded_gpu=p.tokens_s / (gpus * left * engine.max_output_tok_s),
    )
