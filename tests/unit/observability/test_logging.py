"""Log lines: the JSON schema log shippers index, the readable form for a terminal, the
ids each line carries and the library chatter kept out of INFO."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator

import pytest

from axon.observability import logging as axon_logging
from axon.observability import tracing
from axon.observability.logging import (
    CHATTY_LOGGERS,
    JsonFormatter,
    TextFormatter,
    configure,
    request_id_var,
    session_id_var,
)
from support.services import missing

SCHEMA = {
    "timestamp",
    "level",
    "logger",
    "event",
    "service",
    "request_id",
    "session_id",
    "trace_id",
    "span_id",
}
TURN_EXTRAS = {
    "model": "smollm2-135m",
    "outcome": "ok",
    "prompt_tokens": 12,
    "output_tokens": 24,
    "queue_wait_s": 0.0005521774291992188,
    "ttft_s": 0.051,
}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def record(
    event: str = "turn finished", *, name: str = "axon.sessions.relay", **extra: object
) -> logging.LogRecord:
    rec = logging.LogRecord(name, logging.INFO, __file__, 1, event, None, None)
    rec.__dict__.update(extra)
    return rec


@pytest.fixture
def ids() -> Iterator[None]:
    tokens = (request_id_var.set("msg_0123"), session_id_var.set("sess_4567"))
    yield
    request_id_var.reset(tokens[0])
    session_id_var.reset(tokens[1])


@pytest.fixture
def span(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    """A current OpenTelemetry span, as a traced request leaves one."""
    try:
        from opentelemetry import trace
    except ImportError:
        missing("opentelemetry-api is not installed (the distributed extra brings it)")
    # What tracing.configure() leaves once an endpoint is set, without its exporter.
    monkeypatch.setattr(tracing, "_enabled", True)
    context = trace.SpanContext(
        trace_id=0x0AF7651916CD43DD8448EB211C80319C,
        span_id=0xB7AD6B7169203331,
        is_remote=False,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    with trace.use_span(trace.NonRecordingSpan(context)):
        yield "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure() changes process-wide logging; put it back for the other tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    access = logging.getLogger("uvicorn.access").disabled
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger("uvicorn.access").disabled = access


@pytest.mark.usefixtures("ids")
def test_json_line_has_the_schema_and_the_extras() -> None:
    line = JsonFormatter("axon-session-manager").format(record(**TURN_EXTRAS))

    entry = json.loads(line)
    assert entry.keys() >= SCHEMA
    assert entry["level"] == "info"
    assert entry["logger"] == "axon.sessions.relay"
    assert entry["event"] == "turn finished"
    assert entry["service"] == "axon-session-manager"
    assert (entry["request_id"], entry["session_id"]) == ("msg_0123", "sess_4567")
    assert {k: entry[k] for k in TURN_EXTRAS} == TURN_EXTRAS
    # Only the schema and what the caller passed: no LogRecord internals (args, msg,
    # pathname...) that could carry a formatted prompt.
    assert entry.keys() == SCHEMA | TURN_EXTRAS.keys()
    assert "\n" not in line


def test_ids_are_null_outside_a_request_and_a_trace() -> None:
    entry = json.loads(JsonFormatter("axon-worker").format(record()))

    assert {k: entry[k] for k in ("request_id", "session_id", "trace_id", "span_id")} == {
        "request_id": None,
        "session_id": None,
        "trace_id": None,
        "span_id": None,
    }


def test_trace_and_span_ids_come_from_the_current_span(span: tuple[str, str]) -> None:
    entry = json.loads(JsonFormatter("axon-gateway").format(record()))

    assert (entry["trace_id"], entry["span_id"]) == span


@pytest.mark.usefixtures("ids")
def test_an_id_passed_with_the_line_wins_over_the_context() -> None:
    # A worker handing a job on logs about that job, not the one it is running.
    entry = json.loads(JsonFormatter("axon-worker").format(record(request_id="msg_other")))

    assert entry["request_id"] == "msg_other"
    assert entry["session_id"] == "sess_4567"


def test_json_line_carries_the_exception() -> None:
    try:
        raise RuntimeError("store unreachable")
    except RuntimeError:
        rec = logging.LogRecord("axon.x", logging.ERROR, __file__, 1, "failed", None, None)
        rec.exc_info = sys.exc_info()

    entry = json.loads(JsonFormatter("axon").format(rec))

    assert entry["level"] == "error"
    assert "RuntimeError: store unreachable" in entry["exception"]


@pytest.mark.usefixtures("ids")
def test_text_line_reads_like_a_sentence() -> None:
    line = TextFormatter().format(record(**TURN_EXTRAS, reason="rate limit"))

    assert re.fullmatch(
        r"\d\d:\d\d:\d\d INFO  sessions\.relay  turn finished  model=smollm2-135m outcome=ok "
        r"prompt_tokens=12 output_tokens=24 queue_wait_s=0\.000552177 ttft_s=0\.051 "
        r'reason="rate limit" request_id=msg_0123 session_id=sess_4567',
        line,
    ), line


def test_text_line_leaves_out_what_is_unknown() -> None:
    line = TextFormatter().format(record("worker ready", name="axon.worker.runner", tenant=None))

    assert line.endswith("INFO  worker.runner  worker ready")


def test_text_line_names_the_trace(span: tuple[str, str]) -> None:
    line = TextFormatter().format(record())

    assert line.endswith(f"trace_id={span[0]}")
    assert span[1] not in line


def test_colour_only_when_asked() -> None:
    plain = TextFormatter(colour=False).format(record(outcome="ok"))
    coloured = TextFormatter(colour=True).format(record(outcome="ok"))

    assert not ANSI.search(plain)
    assert ANSI.search(coloured)
    assert ANSI.sub("", coloured) == plain


@pytest.mark.usefixtures("restore_logging")
def test_auto_writes_json_to_a_pipe() -> None:
    out = io.StringIO()
    configure(service="axon-serve", stream=out)

    logging.getLogger("axon.test").info("ready", extra={"port": 8000})

    entry = json.loads(out.getvalue())
    assert (entry["event"], entry["service"], entry["port"]) == ("ready", "axon-serve", 8000)


@pytest.mark.usefixtures("restore_logging")
def test_auto_writes_coloured_text_to_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = Terminal()
    configure(service="axon-serve", stream=out)

    logging.getLogger("axon.test").warning("slow", extra={"delay_s": 2})

    line = out.getvalue()
    assert ANSI.search(line)
    assert ANSI.sub("", line).rstrip("\n").endswith("WARNING test  slow  delay_s=2")


@pytest.mark.usefixtures("restore_logging")
def test_no_color_keeps_a_terminal_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    out = Terminal()
    configure(service="axon-serve", stream=out)

    logging.getLogger("axon.test").info("ready")

    assert out.getvalue().rstrip("\n").endswith("INFO  test  ready")
    assert not ANSI.search(out.getvalue())


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize(
    ("fmt", "stream", "is_json"),
    [("json", Terminal, True), ("text", io.StringIO, False)],
)
def test_an_explicit_format_wins_over_the_terminal(
    fmt: axon_logging.LogFormat, stream: type[io.StringIO], is_json: bool
) -> None:
    out = stream()
    configure(service="axon", fmt=fmt, stream=out)

    logging.getLogger("axon.test").info("ready")

    line = out.getvalue().strip()
    assert line.startswith("{") is is_json
    assert not ANSI.search(line)  # an explicit text format on a pipe stays plain


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="auto, json or text"):
        axon_logging.resolve_format("yaml", io.StringIO())  # type: ignore[arg-type]


@pytest.mark.usefixtures("restore_logging")
def test_library_chatter_stays_below_info() -> None:
    out = io.StringIO()
    configure(service="axon-serve", level="INFO", fmt="json", stream=out)

    logging.getLogger("alembic.runtime.migration").info("Context impl PostgresqlImpl.")
    logging.getLogger("httpx").info('HTTP Request: GET http://x "HTTP/1.1 200 OK"')
    logging.getLogger("aio_pika.robust_connection").info("Connection attempt")
    logging.getLogger("aiormq.connection").info("Connecting")
    logging.getLogger("alembic.runtime.migration").warning("Revision not found")
    logging.getLogger("axon.sessions.manager").info("turn queued")

    events = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert events == ["Revision not found", "turn queued"]
    # llama-cpp-python prints llama.cpp's messages to stderr when this logger's level lets
    # them through, and counts the model-loading report as warnings.
    assert logging.getLogger("llama-cpp-python").level == logging.ERROR


@pytest.mark.usefixtures("restore_logging")
def test_debug_lets_library_chatter_through() -> None:
    configure(service="axon-serve", level="INFO", fmt="json", stream=io.StringIO())
    out = io.StringIO()
    configure(service="axon-serve", level="DEBUG", fmt="json", stream=out)

    logging.getLogger("alembic.runtime.migration").info("Will assume transactional DDL.")

    assert json.loads(out.getvalue())["event"] == "Will assume transactional DDL."
