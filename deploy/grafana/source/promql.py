"""PromQL for the dashboards: label selectors, the SLOs' constants, and query helpers."""

from __future__ import annotations

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
#: The time-to-first-token histogram, and its bucket of the turns within the objective.
TTFT = "axon_turn_time_to_first_token_seconds"
WITHIN_TTFT_THRESHOLD = f'le="{TTFT_THRESHOLD}"'


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
