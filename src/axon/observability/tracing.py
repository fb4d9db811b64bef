"""Traces: OpenTelemetry, the one module that imports it.

Off (and free) unless an OTLP endpoint is configured. Then every process exports its spans
over OTLP/HTTP, and the maintained instrumentations (ASGI, httpx, aio-pika, redis,
SQLAlchemy) add theirs; the W3C ``traceparent`` rides in the job and its AMQP headers so
that one chat turn is one trace from the gateway to the engine and back.
"""

from __future__ import annotations

try:
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - the distributed extra brings it
    _trace = None  # type: ignore[assignment]


def current_ids() -> tuple[str | None, str | None]:
    """The current span's (trace id, span id) as lowercase hex, or (None, None) outside a
    recorded trace: what each log line carries."""
    if _trace is None:
        return None, None
    context = _trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
