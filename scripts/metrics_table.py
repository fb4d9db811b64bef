"""Print docs/observability.md's metric table from the metric definitions themselves."""

from __future__ import annotations

import doc_table  # the scripts folder: run as `python scripts/...`

from axon.observability.metrics import REGISTRY


def rows() -> list[tuple[str, str, str, str]]:
    out: list[tuple[str, str, str, str]] = []
    # The registry has no public list of its collectors; metrics are the ones that
    # describe themselves (the process collector, documented by Prometheus, does not).
    for collector in list(REGISTRY._collector_to_names):
        describe = getattr(collector, "describe", None)
        if describe is None:
            continue
        for family in describe():
            labels = ", ".join(f"`{n}`" for n in _label_names(collector))
            name = f"`{family.name}{'_total' if family.type == 'counter' else ''}`"
            out.append((name, family.type, labels or "none", family.documentation))
    return sorted(out)


def _label_names(collector: object) -> tuple[str, ...]:
    return tuple(getattr(collector, "_labelnames", ()))


def table() -> str:
    lines = ["| Metric | Type | Labels | Meaning |", "|---|---|---|---|"]
    lines += [f"| {n} | {t} | {labels} | {text} |" for n, t, labels, text in rows()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    doc_table.main(table)
