"""Run an ASGI app with uvicorn, hardened against slow clients and forged client addresses."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from axon.config import Settings
from axon.gateway.drain import Drain

log = logging.getLogger(__name__)

# A request head (request line and headers) larger than this gets a 431. httptools sets
# no bound, so without one a client could send gigabytes of headers inside the deadline.
# uvicorn's h11 protocol allows 16 KiB, nginx about 32 KiB; large cookies and tokens fit.
MAX_HEADER_BYTES = 65_536


def _closing_response(status: bytes) -> bytes:
    body = status.split(b" ", 1)[1] + b"\n"
    return b"".join(
        [
            b"HTTP/1.1 " + status + b"\r\n",
            b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        ]
    )


_REQUEST_TIMEOUT = _closing_response(b"408 Request Timeout")
_HEADERS_TOO_LARGE = _closing_response(b"431 Request Header Fields Too Large")


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline, and a size bound, for a request's head.

    uvicorn bounds only idle keep-alive; a client that sends its headers a byte at a time
    holds its connection for ever, and a few hundred such clients exhaust the server
    (slowloris). Here the clock starts when the connection is made, and again at the
    first byte of the next request (counted from the end of the previous response, if it
    is still being sent); it stops when the headers are complete, so neither a slow body
    nor a minutes-long stream is ever cut, and idle keep-alive stays uvicorn's business.
    When it fires, the client gets a 408 and the connection is closed.
    """

    header_timeout_s: float = 10.0
    _header_deadline: asyncio.TimerHandle | None = None
    # The next request began while the previous response was still being sent.
    _deadline_pending = False
    # Between a request's complete headers and the end of its body.
    _reading_body = False
    # Received since the last request's head or body ended; may undercount by one read.
    _head_bytes = 0

    def connection_made(  # type: ignore[override]
        self, transport: asyncio.Transport
    ) -> None:
        super().connection_made(transport)
        # Also bounds a client that connects and sends nothing: uvicorn's keep-alive
        # timer only starts after a first response.
        self._start_clock()

    def data_received(self, data: bytes) -> None:
        if not self._reading_body:
            self._head_bytes += len(data)
            # Blank lines count too: the parser skips them, but uvicorn cancels its
            # keep-alive timer on any byte, and nothing else would close the connection.
            if self._header_deadline is None:
                self._start_clock()
        super().data_received(data)
        if (
            not self._reading_body
            and self._head_bytes > MAX_HEADER_BYTES
            and not self.transport.is_closing()
        ):
            self._reject(_HEADERS_TOO_LARGE)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A request that begins in the same read as the end of the previous one.
        if self._header_deadline is None:
            self._start_clock()

    def on_headers_complete(self) -> None:
        self._stop_clock()
        self._reading_body = True
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._head_bytes = 0
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._deadline_pending and not self.transport.is_closing():
            self._start_clock()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_clock()
        super().connection_lost(exc)

    def _response_running(self) -> bool:
        cycle: RequestResponseCycle | None = self.cycle
        return cycle is not None and not cycle.response_complete

    def _start_clock(self) -> None:
        # A client may send its next request before the current response ends (a stray
        # blank line, pipelining); its clock waits, or it would cut that response.
        self._deadline_pending = self._response_running()
        if not self._deadline_pending:
            self._header_deadline = self.loop.call_later(
                self.header_timeout_s, self._on_header_deadline
            )

    def _stop_clock(self) -> None:
        self._deadline_pending = False
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _on_header_deadline(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            # Debug, not warning: under attack this fires for every connection.
            log.debug("request headers took over %ss; closing", self.header_timeout_s)
            self._reject(_REQUEST_TIMEOUT)

    def _reject(self, response: bytes) -> None:
        # A reply cannot be slipped into a response being sent; then just close.
        if not self._response_running():
            self.transport.write(response)
        self.transport.close()


def header_deadline_protocol(timeout_s: float) -> type[HeaderDeadlineProtocol]:
    """The protocol class with its deadline set: uvicorn builds protocols from a class."""

    class Configured(HeaderDeadlineProtocol):
        header_timeout_s = timeout_s

    return Configured


def server_config(app: FastAPI, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.server.host,
        port=settings.server.port,
        # Chosen explicitly (not "auto"): the header deadline is built on this protocol.
        http=header_deadline_protocol(settings.limits.header_timeout_s),
        # uvicorn would trust `X-Forwarded-For` from 127.0.0.1, letting any local client
        # forge its address past per-address limits; the app decides which proxies to
        # trust (`limits.trusted_proxies`).
        proxy_headers=False,
        log_config=None,
        access_log=False,
        # Once draining, every stream ends by its next entry or keep-alive (at most 10 s
        # apart) with a re-attach event; past this, what is left is cut.
        timeout_graceful_shutdown=15,
        timeout_keep_alive=30,
    )


class DrainingServer(uvicorn.Server):
    """uvicorn, with a drain before it stops: on the first SIGTERM or Ctrl-C, readiness
    goes false and open streams end with a re-attach event (``Drain``), and only
    ``drain_s`` later does uvicorn stop listening and finish. A second signal stops at
    once."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_s: float) -> None:
        super().__init__(config)
        self._drain = drain
        self._drain_s = drain_s
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._drain.draining or self._loop is None or self._drain_s <= 0:
            super().handle_exit(sig, frame)
            return
        log.info("draining before shutdown", extra={"drain_s": self._drain_s})
        self._drain.start()
        # A signal handler may run in the middle of the loop's own code: schedule, never
        # touch the loop directly.
        self._loop.call_soon_threadsafe(
            self._loop.call_later, self._drain_s, super().handle_exit, sig, frame
        )


async def serve_http(app: FastAPI, settings: Settings) -> None:
    """Serve ``app`` on ``settings.server``'s address until told to exit, draining first."""
    config = server_config(app, settings)
    drain: Drain = getattr(app.state, "drain", None) or Drain()
    await DrainingServer(config, drain, settings.server.drain_s).serve()
