"""One chat turn through the distributed stack (gateway, session manager, worker, on real
PostgreSQL, Redis and RabbitMQ, with the real model) is one trace, exported over OTLP to a
receiver this test runs; and every log line of that turn, in every process, is JSON that
carries the turn's request id and trace id, and none carries its text."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from support.server import AxonProcess
from support.services import cleanup, new_namespace
from support.sse import parse
from support.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

MODEL = "smollm2-135m-instruct"
PROMPT = "Trace marker zebra-quartz: name three colours."


@dataclass(frozen=True)
class Received:
    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    links: tuple[str, ...]
    start_ns: int
    end_ns: int


class Receiver:
    """An OTLP/HTTP trace receiver: what the exporters of the stack's processes send."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                receiver.add(request)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        for resource_spans in request.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            service = attributes.get("service.name", "")
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    with self._lock:
                        self.spans.append(
                            Received(
                                service=service,
                                name=span.name,
                                kind=span.kind,
                                trace_id=span.trace_id.hex(),
                                span_id=span.span_id.hex(),
                                parent_id=span.parent_span_id.hex(),
                                links=tuple(link.span_id.hex() for link in span.links),
                                start_ns=span.start_time_unix_nano,
                                end_ns=span.end_time_unix_nano,
                            )
                        )

    def trace(self, trace_id: str) -> list[Received]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> Iterator[Stack]:
    ns = new_namespace()
    env = {
        "AXON_ENGINE__THREADS": "1",
        "AXON_ENGINE__CAPACITY": "2",
        "AXON_ENGINE__CONTEXT_WINDOW": "2048",
        "AXON_TRACING__OTLP_ENDPOINT": receiver.url,
        "AXON_LOG__LEVEL": "INFO",
    }
    s = Stack(ns, tmp_path_factory.mktemp("axon-trace"), env, managers=1, workers=1, gateways=1)
    try:
        yield s
    finally:
        s.stop()
        cleanup(ns, [MODEL])


def _offsets(processes: list[AxonProcess]) -> dict[Path, int]:
    return {p.log_path: p.log_path.stat().st_size for p in processes}


def _new_lines(offsets: dict[Path, int]) -> dict[Path, list[str]]:
    lines: dict[Path, list[str]] = {}
    for path, offset in offsets.items():
        with path.open("rb") as f:
            f.seek(offset)
            lines[path] = [ln for ln in f.read().decode().splitlines() if ln.strip()]
    return lines


def _turn(gateway: AxonProcess) -> tuple[str, str]:
    """One streamed session turn: (reply id, reply text)."""
    with httpx.Client(base_url=gateway.url, timeout=120) as http:
        sid = http.post("/v1/sessions", json={"title": "traced"}).json()["id"]
        r = http.post(f"/v1/sessions/{sid}/messages", json={"content": PROMPT, "max_tokens": 16})
        assert r.status_code == 200, r.text
        events = parse(r.text)
        assert events[0].event == "turn", r.text[:500]
        assert events[-1].event == "done", r.text[-500:]
        return events[0].data["reply_id"], events[-1].data["message"]["content"]


def _tree(spans: list[Received]) -> str:
    """The trace as an indented outline with each span's offset and duration (ms), shown
    with ``pytest -s``: where the turn spent its time."""
    start = min(s.start_ns for s in spans)
    children: dict[str, list[Received]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        children.setdefault(span.parent_id, []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            offset = (span.start_ns - start) / 1e6
            took = (span.end_ns - span.start_ns) / 1e6
            lines.append(f"{offset:9.1f} {took:9.1f}  {'  ' * depth}{span.name}  [{span.service}]")
            walk(span.span_id, depth + 1)

    for root in ("", "0" * 16):
        walk(root, 0)
    return "\n".join(["   at(ms)   took(ms)  span", *lines])


def _wait_for(receiver: Receiver, trace_id: str, services: set[str]) -> list[Received]:
    deadline = time.monotonic() + 30
    spans: list[Received] = []
    while time.monotonic() < deadline:
        spans = receiver.trace(trace_id)
        names = {s.name for s in spans}
        if services <= {s.service for s in spans} and {"axon.decode", "axon.relay"} <= names:
            return spans
        time.sleep(0.5)
    return spans


def test_one_turn_is_one_trace_and_its_logs_carry_it(stack: Stack, receiver: Receiver) -> None:
    offsets = _offsets(stack.processes)
    reply_id, reply_text = _turn(stack.gateways[0])

    # The turn's trace: the one whose worker job span names this reply.
    deadline = time.monotonic() + 30
    trace_id = None
    while trace_id is None and time.monotonic() < deadline:
        trace_id = next((s.trace_id for s in receiver.spans if s.name == "axon.job"), None)
        time.sleep(0.5)
    assert trace_id is not None, "no worker span arrived at the OTLP receiver"
    services = {"axon-gateway", "axon-session-manager", "axon-worker"}
    spans = _wait_for(receiver, trace_id, services)
    by_id = {s.span_id: s for s in spans}
    names = {s.name for s in spans}
    print(_tree(spans))

    assert services <= {s.service for s in spans}, f"services in the trace: {spans}"
    roots = [s for s in spans if s.parent_id == "" or s.parent_id == "0" * 16]
    assert len(roots) == 1, roots
    assert roots[0].service == "axon-gateway", roots
    # Every span hangs off the trace's one root: nothing started a trace of its own.
    for span in spans:
        hops = 0
        current = span
        while current.parent_id not in ("", "0" * 16) and hops < 50:
            assert current.parent_id in by_id, f"{current.name} has a parent outside the trace"
            current = by_id[current.parent_id]
            hops += 1
        assert current is roots[0]
    # The stages of the turn, each a span.
    assert {"axon.queue_wait", "axon.job", "axon.prefill", "axon.decode", "axon.relay"} <= names
    # The queue hop: aio-pika's publish span in the session manager, its consume span in
    # the worker, linked as parent and child (through the AMQP headers).
    publish = [s for s in spans if s.kind == Span.SPAN_KIND_PRODUCER]
    consume = [s for s in spans if s.kind == Span.SPAN_KIND_CONSUMER]
    assert publish, "no publish span"
    assert all(s.service == "axon-session-manager" for s in publish), publish
    assert consume, "no consume span"
    assert all(s.service == "axon-worker" for s in consume), consume
    publish_ids = {s.span_id for s in publish}
    assert any(c.parent_id in publish_ids or publish_ids & set(c.links) for c in consume)
    # The datastores as the turn used them: SQL and Redis spans.
    assert any(
        s.service == "axon-session-manager" and s.kind == Span.SPAN_KIND_CLIENT for s in spans
    )

    # Logs: give the processes a moment to write, then read what the turn wrote.
    time.sleep(1.0)
    lines = _new_lines(offsets)
    with_reply: dict[str, int] = {}
    for path, entries in lines.items():
        for line in entries:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                pytest.fail(f"{path.name}: a log line that is not JSON: {line[:200]!r}")
            assert "zebra-quartz" not in line, f"the prompt in {path.name}: {line}"
            if reply_text.strip():
                assert reply_text.strip() not in line, f"reply text in {path.name}: {line}"
            # Nothing else ran meanwhile: every line written is this turn's, and says so.
            assert entry.get("request_id") == reply_id, f"{path.name}: {line}"
            assert entry.get("trace_id") == trace_id, f"{path.name}: {line}"
            assert entry.get("span_id"), line
            with_reply[entry["service"]] = with_reply.get(entry["service"], 0) + 1
    assert {"axon-session-manager", "axon-worker"} <= set(with_reply), with_reply
    finished = [
        json.loads(line)
        for entries in lines.values()
        for line in entries
        if '"turn finished"' in line
    ]
    assert len(finished) == 1, finished
    turn = finished[0]
    assert turn["outcome"] == "ok", turn
    assert turn["completion_tokens"] > 0, turn
    for stage in ("admit_s", "queue_wait_s", "prefill_s", "decode_s", "first_token_s", "total_s"):
        assert isinstance(turn.get(stage), float), (stage, turn)
