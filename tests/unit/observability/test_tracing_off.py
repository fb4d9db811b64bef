"""Tracing is off unless an OTLP endpoint is configured, and then costs nothing: no
provider, no instrumentation, no ids. (On, one turn is one trace: tests/e2e/test_tracing.py.)"""

from __future__ import annotations

import pytest

from axon.config import TracingSettings
from axon.observability import tracing


def test_off_without_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    assert tracing.configure("axon-test", TracingSettings()) is False
    assert tracing.traceparent() is None
    with tracing.span("axon.job", parent=None) as span, tracing.quiet():
        assert span is None
        assert tracing.current_ids() == (None, None)
    tracing.record("axon.prefill", 0.0, 1.0)  # nothing to record it to, and no error


def test_the_endpoint_comes_from_the_setting_or_the_standard_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert tracing.endpoint(TracingSettings()) == "http://collector:4318"
    setting = TracingSettings(otlp_endpoint="http://other:4318")
    assert tracing.endpoint(setting) == "http://other:4318"
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert tracing.endpoint(TracingSettings()) is None
