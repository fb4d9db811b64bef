"""Capacity plan: how many gateways, session managers and GPU workers, and what size of
Redis, PostgreSQL and RabbitMQ serve 1,000, 10,000 and 100,000 concurrent conversations;
which part saturates first at each step; and what surviving a zone outage costs.

Pure arithmetic over three kinds of input, each kept apart and named for what it is:

- MEASURED here: what a turn, a relayed token and an open stream cost each role process
  and each datastore, from `benchmarks/role_cost.py` (date, machine and command beside
  the figures in `benchmarks/capacity_inputs.py`);
- PUBLISHED, not measured here: the engine's throughput per GPU, from vLLM's own
  benchmark of a named model and GPU;
- ASSUMED: the workload and the planning rules, as flags with defaults.

    python benchmarks/capacity.py                               # the plan, in Markdown
    python benchmarks/capacity.py --turns-per-minute 2 --reply-tokens 400
    python benchmarks/capacity.py --measure                     # measure again (minutes)
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields, is_dataclass

from capacity_inputs import MEASURED, SIZES, VLLM_H100_LLAMA3_8B, Engine, Measured, Rules, Workload
from capacity_plan import Plan, ZoneOutage, plan, zone_outage

# -- the report -----------------------------------------------------------------------------


def _gpu_outage(load: float, engine: Engine) -> str:
    if load <= 1:
        return f"GPUs at {load:.0%}"
    tpot_ms = engine.saturated_tpot_s * 1000
    return f"GPUs at {load:.0%}: {1 - 1 / load:.0%} of turns shed, TPOT ~{tpot_ms:.0f} ms"


def _n(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def markdown(
    plans: list[Plan], outages: list[ZoneOutage], m: Measured, engine: Engine, w: Workload, r: Rules
) -> str:
    head = "| | " + " | ".join(f"{p.conversations:,} conversations" for p in plans) + " |"
    lines = [head, "|---" * (len(plans) + 1) + "|"]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("turns/s", [_n(p.turns_s, 1) for p in plans])
    row("output tokens/s", [_n(p.tokens_s) for p in plans])
    row(
        "streams open at once (share of conversations)",
        [f"{_n(p.open_streams)} ({p.open_streams / p.conversations:.1%})" for p in plans],
    )
    row(
        "**gateways** (1 core each; RSS)",
        [f"**{p.gateways}** ({_n(p.gateway_mib)} MiB)" for p in plans],
    )
    row(
        "**session managers** (1 core each; RSS)",
        [f"**{p.session_managers}** ({_n(p.session_manager_mib)} MiB)" for p in plans],
    )
    row(
        f"**GPU workers** ({engine.gpu}, {engine.model})",
        [f"**{p.gpus}** (capacity {p.worker_capacity})" for p in plans],
    )
    row("worker process CPU per GPU", [f"{p.worker_cores_per_gpu:.2f} core" for p in plans])
    row(
        "**Redis** (memory; ops/s; command thread; clients)",
        [
            f"**{_n(p.redis_gib, 1)} GiB**; {_n(p.redis_ops_s)}; {p.redis_core:.2f} core"
            + (f" (**{p.redis_primaries} primaries' worth**)" if p.redis_primaries > 1 else "")
            + f"; {_n(p.redis_clients)}"
            for p in plans
        ],
    )
    row(
        "**PostgreSQL** (commits/s; vCPU; storage/day)",
        [
            f"**{_n(p.pg_commits_s)}**; {p.pg_node} ({_n(p.pg_vcpu)} vCPU); "
            f"{_n(p.pg_gib_day, 1)} GiB"
            for p in plans
        ],
    )
    row(
        "**RabbitMQ** (publishes/s = deliveries/s = acks/s; MiB/s; node CPU)",
        [
            f"**{_n(p.mq_publish_s)}**; {_n(p.mq_mib_s, 1)}; {p.mq_core:.2f} core; {p.mq_node}"
            for p in plans
        ],
    )
    row("queue depth", [f"~0 planned; at most {r.max_queue_depth} (then 503)" for _ in plans])
    row(
        "saturates first (capacity / load)",
        [f"{p.first.name} ({p.first.headroom:.2f}x)" for p in plans],
    )
    row(
        "zone outage, each zone carries all: gateways / SMs / GPUs",
        [" / ".join(str(n) for n in o.full) for o in outages],
    )
    row(
        f"zone outage, N+{r.zone_headroom:.0%}: gateways / SMs / GPUs",
        [" / ".join(str(n) for n in o.degraded) for o in outages],
    )
    row(
        f"during an outage at N+{r.zone_headroom:.0%}: CPU roles; GPUs (of saturation)",
        [f"{o.degraded_cpu:.0%} CPU; {_gpu_outage(o.degraded_gpu, engine)}" for o in outages],
    )
    parts = [
        "",
        "Headroom of every part (capacity of the plan over its load; below 1.00x the part "
        "cannot carry the load as planned):",
        "",
    ]
    parts.append("| part | " + " | ".join(f"{p.conversations:,}" for p in plans) + " |")
    parts.append("|---" * (len(plans) + 1) + "|")
    for i, part in enumerate(plans[0].parts):
        cells = [f"{p.parts[i].headroom:.2f}x ({p.parts[i].size})" for p in plans]
        parts.append(f"| {part.name} | " + " | ".join(cells) + " |")
    # Loads grow in proportion to conversations: where each one-instance part reaches the
    # target utilisation (and saturates).
    last = plans[-1]
    per = {
        "one Redis primary's command thread": last.redis_core,
        "one quorum queue (the node's CPU as its leader's)": last.mq_core,
    }
    u = r.target_utilisation
    parts += ["", "Conversations one instance carries (at the target utilisation; saturated):", ""]
    for name, load in per.items():
        scale = last.conversations / load if load else math.inf
        parts.append(f"- {name}: {_n(u * scale)}; {_n(scale)}")
    return "\n".join(lines + parts)


def assumptions(m: Measured, engine: Engine, w: Workload, r: Rules) -> str:
    out = [
        f"Measured ({m.date}, {m.machine}, `{m.command}`, {m.stream_tokens_per_s:g} tokens/s "
        "per stream):",
        "",
        "| role | CPU ms/turn | CPU s/1k tokens | RSS idle MiB | RSS KiB/stream |",
        "|---|---|---|---|---|",
    ]
    for name, cost in (
        ("gateway", m.gateway),
        ("session manager", m.session_manager),
        ("worker", m.worker),
    ):
        out.append(
            f"| {name} | {cost.cpu_ms_per_turn} | {cost.cpu_s_per_1k_tokens} | "
            f"{cost.rss_mib_idle} | {cost.rss_kib_per_stream} |"
        )
    rest = [
        f"{f.name}={getattr(m, f.name)}"
        for f in fields(m)
        if not is_dataclass(getattr(m, f.name))
        and not isinstance(getattr(m, f.name), str)
        and f.name != "stream_tokens_per_s"
    ]
    out += ["", "Datastores (measured): " + ", ".join(rest) + ".", ""]
    out.append(
        f"Published, not measured here: {engine.model} on {engine.gpu}, "
        f"{engine.output_tok_s:,.0f} output tokens/s per GPU planned "
        f"(saturated {engine.max_output_tok_s:,.0f}), TTFT {engine.ttft_s * 1000:.0f} ms, "
        f"TPOT {engine.tpot_s * 1000:.0f} ms; source: {engine.source}."
    )
    out.append("")
    out.append(
        "Assumed: "
        + ", ".join(f"{f.name}={getattr(w, f.name)}" for f in fields(w))
        + "; "
        + ", ".join(f"{f.name}={getattr(r, f.name)}" for f in fields(r))
        + "."
    )
    return "\n".join(out)


def constants(m: Measured) -> str:
    """``m`` as the Python source of the MEASURED constant in capacity_inputs.py."""
    lines = [f"# Measured on {m.date} on {m.machine}, with `{m.command}`.", "MEASURED = Measured("]
    for f in fields(m):
        value = getattr(m, f.name)
        if is_dataclass(value):
            inner = ", ".join(f"{g.name}={getattr(value, g.name)!r}" for g in fields(value))
            text = f"{type(value).__name__}({inner})"
        else:
            text = repr(value)
        lines.append(f"    {f.name}={text},")
    lines.append(")")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--measure", action="store_true", help="run benchmarks/role_cost.py, print constants"
    )
    parser.add_argument("--speed", type=float, default=70.0, help="with --measure: tokens/s")
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    for f in fields(Workload) + fields(Rules):
        default = f.default
        parser.add_argument(
            "--" + f.name.replace("_", "-"), type=type(default), default=default, metavar="N"
        )
    args = parser.parse_args()
    m = MEASURED
    if args.measure:
        from role_cost import measure, report

        m = measure(args.speed, command="python benchmarks/capacity.py --measure")
        print()
        print(constants(m))
        report(m)
        print()
    w = Workload(**{f.name: getattr(args, f.name) for f in fields(Workload)})
    r = Rules(**{f.name: getattr(args, f.name) for f in fields(Rules)})
    engine = VLLM_H100_LLAMA3_8B
    plans = [plan(n, m, engine, w, r) for n in args.sizes]
    print(markdown(plans, [zone_outage(p, engine, r) for p in plans], m, engine, w, r))
    print()
    print(assumptions(m, engine, w, r))


if __name__ == "__main__":
    main()
