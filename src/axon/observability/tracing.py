"""Traces: OpenTelemetry, the one module that imports it.

Off, and free, unless an OTLP endpoint is configured (``AXON_TRACING__OTLP_ENDPOINT`` or
the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``): then each process exports its spans over
OTLP/HTTP, and the maintained instrumentations add theirs (FastAPI, httpx, aio-pika,
redis, SQLAlchemy). The W3C ``traceparent`` rides in the job (and, through aio-pika's
instrumentation, in its AMQP headers), so one chat turn is one trace: the gateway, the
session manager, the publish and consume, the worker's queue wait, prefill and decode,
and the relay back to the client.

Axon's own spans exist only where no instrumentation sees the stage (queue wait, prefill,
decode, relay). Background loops that poll (heartbeats, takeover scans, the outbox, the
cancel check) run ``quiet()``, so a trace holds a turn's work, not a second-by-second
stream of polls.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any

from axon import __version__
from axon.config import TracingSettings
from axon.core.errors import ConfigError

try:
    from opentelemetry import trace as _trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the distributed extra brings it
    _trace = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_TRACER_NAME = "axon"
#: Set once ``configure`` installed a provider: until then every helper is a no-op.
_enabled = False
_provider: Any = None
#: Paths whose requests are not traced: probes and scrapes, every few seconds each.
_UNTRACED_PATHS = "healthz,readyz,metrics"


def endpoint(settings: TracingSettings) -> str | None:
    """The OTLP/HTTP base URL traces go to, or None when tracing is off."""
    return settings.otlp_endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None


def configure(service: str, settings: TracingSettings) -> bool:
    """Install the tracer provider and the instrumentations when an endpoint is set.
    Returns whether tracing is on. Called once per process, before any client is built."""
    global _enabled, _provider
    base = endpoint(settings)
    if base is None or _enabled:
        return _enabled
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.aio_pika import AioPikaInstrumentor
        from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ConfigError(
            "tracing needs OpenTelemetry; install it with: pip install 'axon-serving[distributed]'"
        ) from exc
    resource = Resource.create({"service.name": service, "service.version": __version__})
    provider = TracerProvider(
        resource=resource, sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio))
    )
    exporter = OTLPSpanExporter(endpoint=base.rstrip("/") + "/v1/traces")
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=1000))
    _trace.set_tracer_provider(provider)
    HTTPXClientInstrumentor().instrument()
    # Its declared range stops below aio-pika 10, whose publish and consume it wraps
    # unchanged (the tracing end-to-end test proves the hop is traced).
    AioPikaInstrumentor().instrument(skip_dep_check=True)
    RedisInstrumentor().instrument()
    _provider = provider
    _enabled = True
    log.info("exporting traces", extra={"endpoint": base})
    return True


def shutdown() -> None:
    """Send the spans still buffered (a process's last turn is part of its trace too)."""
    if _provider is not None:
        _provider.shutdown()


def instrument_app(app: Any) -> None:
    """Server spans for every request of a FastAPI app, named by route template."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # No span per ASGI send or receive: a stream would get one per token batch.
    FastAPIInstrumentor.instrument_app(
        app, excluded_urls=_UNTRACED_PATHS, exclude_spans=["receive", "send"]
    )


def instrument_engine(sync_engine: Any) -> None:
    """Spans for every statement of a SQLAlchemy engine (its ``sync_engine`` when async).
    Once per process: the instrumentor instruments one engine (a serving process has one,
    the store's)."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor

    # Its declared range stops below SQLAlchemy 2.1, whose engine events it uses unchanged.
    SQLAlchemyInstrumentor().instrument(engine=sync_engine, skip_dep_check=True)


def traceparent() -> str | None:
    """The current span as a W3C ``traceparent``, to carry across the queue."""
    if not _enabled:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


def _parent(traceparent: str | None) -> Any:
    if traceparent is None:
        return None
    return TraceContextTextMapPropagator().extract({"traceparent": traceparent})


@contextmanager
def span(
    name: str,
    *,
    parent: str | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> Iterator[Any]:
    """A span around a block, made current inside it; child of ``parent`` (a
    ``traceparent``) when given, else of the current span."""
    if not _enabled:
        yield None
        return
    tracer = _trace.get_tracer(_TRACER_NAME)
    with tracer.start_as_current_span(
        name, context=_parent(parent), attributes=attributes
    ) as current:
        yield current


def record(
    name: str,
    start_s: float,
    end_s: float,
    *,
    parent: str | None = None,
    attributes: Mapping[str, str | int | float | bool] | None = None,
) -> None:
    """A finished span with known start and end (Unix times): a stage measured, not
    wrapped (the wait in the queue, the prefill that ended with the first token)."""
    if not _enabled:
        return
    tracer = _trace.get_tracer(_TRACER_NAME)
    started = tracer.start_span(
        name, context=_parent(parent), attributes=attributes, start_time=int(start_s * 1e9)
    )
    started.end(end_time=int(end_s * 1e9))


def quiet() -> Any:
    """A block whose calls (redis, SQL, HTTP) make no spans: for polling loops."""
    if not _enabled:
        return nullcontext()
    return _suppressed()


@contextmanager
def _suppressed() -> Iterator[None]:
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        yield


def current_ids() -> tuple[str | None, str | None]:
    """The current span's (trace id, span id) as lowercase hex, or (None, None) outside a
    recorded trace: what each log line carries."""
    if not _enabled:
        return None, None
    context = _trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None, None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")
