"""A TCP proxy in front of the sidecar that fails on demand.

Modes: ``pass`` (bytes flow both ways), ``error`` (each request is answered ``500`` and the
connection closed), ``hang`` (requests are read and never answered) and ``refuse`` (nothing
listens on the port). Changing the mode closes every open connection, so a client's kept-alive
connection meets the new mode at its next request. The proxy runs its own event loop in a
thread; :meth:`FaultProxy.set_mode` may be called from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Literal

__all__ = ["FaultProxy", "Mode"]

Mode = Literal["pass", "error", "hang", "refuse"]

_ERROR = (
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: text/plain\r\n"
    b"content-length: 14\r\nconnection: close\r\n\r\ninjected fault"
)


class FaultProxy:
    """Listens on 127.0.0.1:``port`` and forwards to 127.0.0.1:``target_port`` in ``pass``."""

    def __init__(self, port: int, target_port: int) -> None:
        self.port, self.target_port = port, target_port
        self.mode: Mode = "pass"
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def set_mode(self, mode: Mode) -> None:
        """Switch to ``mode``; returns once the switch is done."""
        asyncio.run_coroutine_threadsafe(self._switch(mode), self._loop).result(10)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.set_mode("refuse")
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True
        )

    async def _switch(self, mode: Mode) -> None:
        self.mode = mode
        for writer in list(self._open):
            writer.close()
        self._open.clear()
        if mode == "refuse" and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        elif mode != "refuse" and self._server is None:
            await self._listen()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            if self.mode == "pass":
                await self._forward(reader, writer)
            elif self.mode == "error":
                await reader.readuntil(b"\r\n\r\n")
                writer.write(_ERROR)
                await writer.drain()
            else:  # hang: read whatever comes, answer nothing
                while await reader.read(65536):
                    pass
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._open.discard(writer)
            writer.close()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._open.add(up_writer)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._open.discard(up_writer)
            up_writer.close()
