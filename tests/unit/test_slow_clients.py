"""The HTTP server closes connections whose headers come too slowly (slowloris) or are too
large, without cutting bodies, streams or idle keep-alive, and ignores a forged
`X-Forwarded-For`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from axon.cli import server
from axon.cli.server import MAX_HEADER_BYTES, serve_http
from axon.config import LimitSettings, ServerSettings, Settings
from axon.gateway.drain import Drain

HEADER_TIMEOUT_S = 1.0
# Generous: a closure is behaviour, not speed; a loaded CI machine may be slow.
CLOSED_WITHIN_S = HEADER_TIMEOUT_S + 5.0
SLOW_CLIENTS = 100
PARTIAL_REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n"


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def client_address(request: Request) -> dict[str, str]:
        return {"client": request.client.host if request.client else ""}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            # Three header timeouts long.
            for i in range(6):
                yield f"data: {i}\n\n"
                await asyncio.sleep(HEADER_TIMEOUT_S / 2)

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture
async def port(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    """A real uvicorn started by `serve_http`, stopped gracefully afterwards."""
    servers: list[uvicorn.Server] = []

    class Recorded(server.DrainingServer):
        def __init__(self, config: uvicorn.Config, drain: Drain, drain_s: float) -> None:
            super().__init__(config, drain, drain_s)
            servers.append(self)

    monkeypatch.setattr(server, "DrainingServer", Recorded)
    settings = Settings(
        # Port 0: the system picks a free one, and no other process can take it first.
        server=ServerSettings(host="127.0.0.1", port=0),
        limits=LimitSettings(header_timeout_s=HEADER_TIMEOUT_S),
    )
    task = asyncio.create_task(serve_http(_app(), settings))
    async with asyncio.timeout(10):
        while not (servers and servers[0].started):
            if task.done():
                task.result()  # Raises why the server did not start.
            await asyncio.sleep(0.01)
    sockets = servers[0].servers[0].sockets
    yield int(sockets[0].getsockname()[1])
    servers[0].should_exit = True
    await asyncio.wait_for(task, 20)


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sent before closing; a reset counts as a close."""
    try:
        return await reader.read()
    except ConnectionResetError:
        return b""


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    return status, await reader.readexactly(length)


async def _slowloris(port: int) -> tuple[bytes, float]:
    """Send headers a line every half second until the server closes the connection;
    return what it sent and how long that took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    reader, writer = await _connect(port)
    try:
        writer.write(PARTIAL_REQUEST)
        closed = asyncio.create_task(_read_until_closed(reader))
        for i in range(int(CLOSED_WITHIN_S * 2) + 4):
            done, _ = await asyncio.wait({closed}, timeout=0.5)
            if done:
                break
            writer.write(b"X-Slow-%d: y\r\n" % i)
        reply = await asyncio.wait_for(closed, timeout=2)
        return reply, loop.time() - start
    finally:
        writer.close()


async def test_slow_clients_are_cut_while_others_are_served(port: int) -> None:
    attack = [asyncio.create_task(_slowloris(port)) for _ in range(SLOW_CLIENTS)]
    await asyncio.sleep(HEADER_TIMEOUT_S / 2)  # All connected, none yet past the deadline.

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/")).status_code == 200

    results = await asyncio.gather(*attack)
    for reply, elapsed in results:
        # The 408, or only EOF: a line the client writes as the server closes makes the
        # server's system reset the connection, and the client's system drop the 408.
        assert reply == b"" or reply.startswith(b"HTTP/1.1 408 ")
        assert HEADER_TIMEOUT_S <= elapsed < CLOSED_WITHIN_S


@pytest.mark.parametrize("sent", [b"", PARTIAL_REQUEST], ids=["nothing", "partial-headers"])
async def test_incomplete_headers_get_a_408(port: int, sent: bytes) -> None:
    reader, writer = await _connect(port)
    try:
        writer.write(sent)
        async with asyncio.timeout(CLOSED_WITHIN_S):
            reply = await _read_until_closed(reader)
    finally:
        writer.close()
    assert reply.startswith(b"HTTP/1.1 408 ")


@pytest.mark.parametrize("sent", [PARTIAL_REQUEST, b"\r\n"], ids=["partial-headers", "blank-line"])
async def test_next_request_on_a_kept_alive_connection_has_the_deadline(
    port: int, sent: bytes
) -> None:
    reader, writer = await _connect(port)
    try:
        writer.write(PARTIAL_REQUEST + b"\r\n")
        assert (await _read_response(reader))[0] == 200
        writer.write(sent)
        async with asyncio.timeout(CLOSED_WITHIN_S):
            reply = await _read_until_closed(reader)
    finally:
        writer.close()
    assert reply.startswith(b"HTTP/1.1 408 ")


async def test_a_request_begun_in_the_same_write_as_the_previous_one_has_the_deadline(
    port: int,
) -> None:
    reader, writer = await _connect(port)
    try:
        writer.write(PARTIAL_REQUEST + b"\r\n" + PARTIAL_REQUEST)
        assert (await _read_response(reader))[0] == 200
        async with asyncio.timeout(CLOSED_WITHIN_S):
            reply = await _read_until_closed(reader)
    finally:
        writer.close()
    assert reply.startswith(b"HTTP/1.1 408 ")


async def test_idle_keep_alive_outlives_the_header_deadline(port: int) -> None:
    reader, writer = await _connect(port)
    try:
        writer.write(PARTIAL_REQUEST + b"\r\n")
        assert (await _read_response(reader))[0] == 200
        await asyncio.sleep(HEADER_TIMEOUT_S * 2)
        writer.write(PARTIAL_REQUEST + b"\r\n")
        assert (await _read_response(reader))[0] == 200
    finally:
        writer.close()


async def test_a_slow_body_is_not_cut(port: int) -> None:
    """The deadline covers headers only: once they arrived, the request is the app's."""
    body = b"abcdef"
    reader, writer = await _connect(port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        for byte in body:
            await asyncio.sleep(HEADER_TIMEOUT_S / 2)
            writer.write(bytes([byte]))
        status, reply = await _read_response(reader)
    finally:
        writer.close()
    assert status == 200
    assert reply == b'{"bytes":6}'


async def test_a_stream_longer_than_the_deadline_is_not_cut(port: int) -> None:
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        client.stream("GET", "/stream") as response,
    ):
        assert response.status_code == 200
        text = "".join([chunk async for chunk in response.aiter_text()])
    assert text == "".join(f"data: {i}\n\n" for i in range(6))


async def test_a_blank_line_sent_during_a_stream_neither_cuts_it_nor_escapes_the_deadline(
    port: int,
) -> None:
    reader, writer = await _connect(port)
    try:
        writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        # Bytes of a next request while the stream runs: its clock waits for the stream's end.
        writer.write(b"\r\n")
        body = await reader.readuntil(b"\r\n0\r\n\r\n")  # The last chunk.
        async with asyncio.timeout(CLOSED_WITHIN_S):
            after = await _read_until_closed(reader)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 200 ")
    assert all(b"data: %d\n\n" % i in body for i in range(6))
    assert after.startswith(b"HTTP/1.1 408 ")


async def test_too_large_headers_get_a_431(port: int) -> None:
    reader, writer = await _connect(port)
    try:
        writer.write(PARTIAL_REQUEST + b"X-Big: " + b"a" * MAX_HEADER_BYTES)
        async with asyncio.timeout(CLOSED_WITHIN_S):
            reply = await _read_until_closed(reader)
    finally:
        writer.close()
    assert reply.startswith(b"HTTP/1.1 431 ")


async def test_large_headers_and_bodies_within_bounds_are_served(port: int) -> None:
    body = b"x" * (4 * MAX_HEADER_BYTES)
    big_header = {"X-Big": "a" * (MAX_HEADER_BYTES // 2)}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/", headers=big_header)).status_code == 200
        # Headers and body in one write: only the head counts towards the bound.
        response = await client.post("/echo", content=body)
    assert response.json() == {"bytes": len(body)}


async def test_forwarded_for_does_not_change_the_client_address(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.get("/", headers={"X-Forwarded-For": "203.0.113.7"})
    assert response.json() == {"client": "127.0.0.1"}


def test_run_still_exports_serve_http() -> None:
    from axon.cli import run

    assert run.serve_http is serve_http
