"""A TCP proxy that partitions a client from a server and heals the partition
(``BlackholeProxy``)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType
from typing import Any, Self

from .base import LOCALHOST


class _Link:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()


class BlackholeProxy:
    """A TCP proxy on a free loopback port that forwards to ``target_port``.

    ``blackhole()`` stops bytes in both directions while every connection stays open, as in
    a network partition: what is sent meanwhile waits (in the proxy and the kernel's
    buffers) and arrives after ``restore()``, as TCP's retransmissions would deliver it once
    a partition heals. A connection opened during a blackhole is accepted but reaches the
    target only after ``restore()``. ``cut()`` closes every open connection at both ends.

    It runs its own event loop in a thread, so it works the same from synchronous code and
    from any test's event loop.
    """

    def __init__(self, target_port: int, *, target_host: str = LOCALHOST) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._flowing = asyncio.Event()
        self._links: set[_Link] = set()
        self._closing = False

    @property
    def address(self) -> tuple[str, int]:
        return (LOCALHOST, self.port)

    @property
    def blackholed(self) -> bool:
        return not self._flowing.is_set()

    @property
    def connections(self) -> int:
        return len(self._links)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        self._thread.start()
        self._call(self._serve())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _serve(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._handle, LOCALHOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(writer)
        self._links.add(link)
        try:
            await self._flowing.wait()
            if self._closing:
                return
            try:
                up_reader, link.upstream = await asyncio.open_connection(*self.target)
            except OSError:
                return
            pumps = [
                asyncio.ensure_future(self._pump(reader, link.upstream)),
                asyncio.ensure_future(self._pump(up_reader, writer)),
            ]
            # Either side closing ends the connection; none of the protocols proxied here
            # keeps talking over a half-closed one.
            _, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pending:
                pump.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        finally:
            self._links.discard(link)
            link.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                data = await reader.read(65536)
                # Held here during a blackhole: neither the bytes nor the close go through.
                await self._flowing.wait()
                if not data:
                    return
                writer.write(data)
                await writer.drain()

    def blackhole(self) -> None:
        async def clear() -> None:
            self._flowing.clear()

        self._call(clear())

    def restore(self) -> None:
        async def set_() -> None:
            self._flowing.set()

        self._call(set_())

    def cut(self) -> None:
        """Close every open connection at once, both ends, without flushing."""

        async def abort_all() -> None:
            links = list(self._links)
            for link in links:
                link.abort()
            # Return once the handlers have let go, so ``connections`` reads 0 after a cut.
            for _ in range(200):
                if not any(link in self._links for link in links):
                    return
                await asyncio.sleep(0.01)

        self._call(abort_all())

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        async def shut() -> None:
            self._closing = True
            if self._server is not None:
                self._server.close()
            for link in list(self._links):
                link.abort()
            # Handlers held by a blackhole wake up, find their sockets closed and return;
            # cancelling them instead makes asyncio's stream server log each one.
            self._flowing.set()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            if tasks:
                _, pending = await asyncio.wait(tasks, timeout=5)
                for task in pending:
                    task.cancel()

        self._call(shut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
