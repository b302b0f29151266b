"""An asyncio TCP proxy the chaos harness can cut: an outage of the broker or the database.

Every service reaches RabbitMQ and PostgreSQL through one of these. ``cut()`` resets every
open link at once and refuses new connections (accepted, then closed) until ``restore()``,
which is what a peer sees when the network between it and the server goes away. The loop
runs in a daemon thread of its own, so the harness calls it from plain threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Coroutine
from typing import Any

CHUNK = 65536
LINGER_RESET = struct.pack("ii", 1, 0)  # struct linger {on, 0 s}: close sends RST


class CuttableProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target``; see the module docstring."""

    def __init__(self, target: tuple[str, int], name: str = "proxy") -> None:
        self.target = target
        self.name = name
        self.cuts = 0  # how many times cut() was called
        self.dropped = 0  # links reset by cut()
        self._up = True
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", 0))
        sock: socket.socket = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def up(self) -> bool:
        return self._up

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._up:
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), timeout=5
            )
        except (OSError, TimeoutError):
            _reset(writer)
            return
        self._writers.update((writer, up_writer))
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        for side in (writer, up_writer):
            self._writers.discard(side)
            _reset(side)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
        except (OSError, RuntimeError):
            pass
        finally:
            _reset(writer)

    async def _cut(self) -> int:
        self._up = False
        links = list(self._writers)
        self._writers.clear()
        for writer in links:
            _reset(writer)
        return len(links) // 2

    async def _restore(self) -> None:
        self._up = True

    def cut(self) -> None:
        """Reset every open link and refuse new ones until :meth:`restore`."""
        self.cuts += 1
        self.dropped += int(self._call(self._cut()))

    def restore(self) -> None:
        self._call(self._restore())

    def close(self) -> None:
        if not self._loop.is_running():
            return

        async def shutdown() -> None:
            await self._cut()
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close at once with a TCP reset (SO_LINGER 0), as a dropped network path looks."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
    writer.transport.abort()
