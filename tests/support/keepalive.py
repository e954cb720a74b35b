"""One HTTP/1.1 connection held open across requests, and told apart from a fresh one.

An HTTP client pool reconnects silently when the server closes; a test about what connections
opened *before* a change see must know it is still on that connection, so this client never
reconnects: once the peer closes, every call raises :class:`ConnectionClosed`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import h11

__all__ = ["ConnectionClosed", "KeepAliveClient"]


class ConnectionClosed(Exception):
    """The server closed the connection (or asked to): the client is spent."""


class KeepAliveClient:
    """``async with KeepAliveClient(port) as c: status, body = await c.get("/x")``."""

    def __init__(self, port: int, host: str = "127.0.0.1", *, authority: str = "test") -> None:
        self.port = port
        self.host = host
        self.authority = authority
        self.requests = 0
        self._conn = h11.Connection(h11.CLIENT)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> KeepAliveClient:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._writer is not None:
            self._writer.close()

    async def get(
        self,
        path: str,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        timeout: float = 5.0,
    ) -> tuple[int, bytes]:
        """GET ``path``; ``headers`` as a mapping or as (name, value) pairs (repeats allowed)."""
        assert self._reader is not None and self._writer is not None, "use as an async context manager"
        if self._conn.our_state is not h11.IDLE:
            raise ConnectionClosed(f"connection not reusable ({self._conn.our_state})")
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        request = h11.Request(method="GET", target=path, headers=[("host", self.authority), *pairs])
        self._writer.write(self._conn.send(request) + self._conn.send(h11.EndOfMessage()))
        await self._writer.drain()
        status, body = 0, b""
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(self._reader.read(65536), timeout)
                if not data and self._conn.their_state is h11.SEND_RESPONSE:
                    raise ConnectionClosed("closed before answering")
                self._conn.receive_data(data)
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionClosed("closed")
        self.requests += 1
        if self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE:
            self._conn.start_next_cycle()
        return status, body

    @property
    def reusable(self) -> bool:
        return self._conn.our_state is h11.IDLE
