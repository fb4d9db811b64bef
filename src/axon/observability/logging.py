"""Logs: one JSON object per line for log shippers, a readable line for a person at a terminal.

The request and session ids ride in context variables so that every log line of a request
carries them without threading them through calls; the trace and span ids come from the
current OpenTelemetry span. Prompt and reply text are never logged: they are user data.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from axon.observability.tracing import current_ids

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
session_id_var: ContextVar[str | None] = ContextVar("session_id", default=None)

LogFormat = Literal["auto", "json", "text"]

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    # uvicorn's copy of the message with terminal colours in it.
    "color_message",
}
_IDS = ("request_id", "session_id", "trace_id", "span_id")

# Libraries that speak at INFO about their own plumbing: migration plugin choices, every
# HTTP request made, broker connection steps, llama.cpp's model-loading report. An operator
# reading a turn's logs wants none of it unless debugging. Each maps to the level it is
# held at otherwise.
CHATTY_LOGGERS = {
    "alembic": logging.WARNING,
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    "aio_pika": logging.WARNING,
    "aiormq": logging.WARNING,
    # llama.cpp's messages, when the engine hands them to Python logging.
    "llama_cpp": logging.WARNING,
    # llama-cpp-python's own callback prints llama.cpp's messages to stderr when this
    # logger's level lets them through, and reads ggml's levels one step too high (an
    # info line counts as a warning): only ERROR keeps the loading report out.
    "llama-cpp-python": logging.ERROR,
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RESERVED and not key.startswith("_")
    }


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """The ids a line carries: its extras win over the context (a worker logging about a
    job it is not running names that job's request)."""
    trace_id, span_id = current_ids()
    ids: dict[str, Any] = {
        "request_id": request_id_var.get(),
        "session_id": session_id_var.get(),
        "trace_id": trace_id,
        "span_id": span_id,
    }
    for key in _IDS:
        if key in record.__dict__:
            ids[key] = record.__dict__[key]
    return ids


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``timestamp``, ``level``, ``logger``, ``event``,
    ``service``, the four ids (null when unknown) and the record's extras."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "service": self.service,
        }
        entry.update(_context(record))
        entry.update(_extras(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str)


_LEVEL_COLOURS = {
    "DEBUG": "\x1b[2m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}
_DIM = "\x1b[2m"
_RESET = "\x1b[0m"


def _text_value(value: Any) -> str:
    if isinstance(value, float):
        # Six significant digits: a timing reads to the microsecond, not to 1e-19 s.
        return f"{value:.6g}"
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or any(c.isspace() or c in '="' for c in text):
        return json.dumps(text)
    return text


class TextFormatter(logging.Formatter):
    """``14:02:11 INFO  sessions.relay  turn finished  outcome=ok ... request_id=msg_...``:
    local time, level, logger (without the ``axon.`` prefix), the event, its extras, then
    the request, session and trace ids; colour only when asked (on a terminal)."""

    def __init__(self, *, colour: bool = False) -> None:
        super().__init__()
        self.colour = colour

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        level = f"{record.levelname:<5}"
        name = record.name.removeprefix("axon.")
        ids = _context(record)
        # A person copies the trace id into a trace viewer; the span id only matters there.
        ids.pop("span_id")
        fields = {k: v for k, v in _extras(record).items() if k not in ids and k != "span_id"}
        fields.update(ids)
        pairs = [(k, _text_value(v)) for k, v in fields.items() if v is not None]
        if self.colour:
            level = f"{_LEVEL_COLOURS.get(record.levelname, '')}{level}{_RESET}"
            name = f"{_DIM}{name}{_RESET}"
            rendered = " ".join(f"{_DIM}{k}={_RESET}{v}" for k, v in pairs)
        else:
            rendered = " ".join(f"{k}={v}" for k, v in pairs)
        line = f"{when} {level} {name}  {record.getMessage()}"
        if rendered:
            line = f"{line}  {rendered}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def resolve_format(fmt: LogFormat, stream: TextIO) -> Literal["json", "text"]:
    """``auto`` means text for a person at a terminal and JSON for anything else (a file,
    a pipe, a container runtime's log collector)."""
    if fmt == "auto":
        return "text" if _isatty(stream) else "json"
    if fmt not in ("json", "text"):
        raise ValueError(f"unknown log format {fmt!r}: use auto, json or text")
    return fmt


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream
        return False


def configure(
    *,
    service: str,
    level: str = "INFO",
    fmt: LogFormat = "auto",
    stream: TextIO | None = None,
) -> None:
    """Send every logger to stdout in one format. Called once by each process entry.

    ``fmt`` is ``auto`` (text on a terminal, JSON otherwise), ``json`` or ``text``.
    Colour only on a terminal, and never when ``NO_COLOR`` is set.
    """
    out = stream if stream is not None else sys.stdout
    handler = logging.StreamHandler(out)
    if resolve_format(fmt, out) == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        colour = _isatty(out) and not os.environ.get("NO_COLOR")
        handler.setFormatter(TextFormatter(colour=colour))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    quiet = root.getEffectiveLevel() > logging.DEBUG
    for name, held in CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(held if quiet else logging.NOTSET)
    # Access logs would repeat what the metrics middleware records, per request.
    logging.getLogger("uvicorn.access").disabled = True
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
