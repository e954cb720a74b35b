"""Connection slots per listening port: a cap on open connections, and idle ones closed.

Each port's :class:`ConnectionSlots` holds its live connections. At the cap, a new connection
closes the longest-idle one (no call in flight) to take its place, or is itself closed when every
connection is busy: a client opening sockets it never uses can neither exhaust the process's file
descriptors nor lock out other clients. A sweep, once a second, closes connections idle past the
idle timeout and those that never completed their handshake. Used by the lean gRPC server and by
the ext_authz HTTP endpoint. Single event loop; not thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Protocol

from waypost.log import get_logger

__all__ = ["ConnectionSlots", "Tracked"]

log = get_logger("waypost.h2grpc")


class Tracked(Protocol):
    last_active: float
    """``time.monotonic()`` of the last call started or finished (or the accept)."""

    def busy(self) -> bool:
        """A call is in flight: never closed for idleness."""
        ...

    def established(self) -> bool:
        """The protocol handshake completed (HTTP/2 preface, or a first HTTP/1.1 request)."""
        ...

    def close_idle(self) -> None:
        """Close politely (GOAWAY for HTTP/2)."""
        ...


class ConnectionSlots:
    def __init__(self, *, max_connections: int, idle_timeout: float, handshake_timeout: float) -> None:
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.live: set[Tracked] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def admit(self, connection: Tracked) -> bool:
        """Register a new connection; False when it must be closed at once (every slot busy)."""
        if len(self.live) >= self.max_connections:
            idle = [c for c in self.live if not c.busy()]
            if not idle:
                log.warning("connection refused: every slot busy", max_connections=self.max_connections)
                return False
            oldest = min(idle, key=lambda c: c.last_active)
            self.live.discard(oldest)
            oldest.close_idle()
        self.live.add(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())
        return True

    def release(self, connection: Tracked) -> None:
        self.live.discard(connection)

    async def _sweep(self) -> None:
        interval = max(0.05, min(1.0, self.idle_timeout / 4, self.handshake_timeout / 4))
        while self.live:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for connection in list(self.live):
                if connection.busy():
                    continue
                limit = self.idle_timeout if connection.established() else self.handshake_timeout
                if now - connection.last_active > limit:
                    self.live.discard(connection)
                    connection.close_idle()
        self._sweeper = None  # restarted by the next admit

    def close_all(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.live):
            with contextlib.suppress(Exception):
                connection.close_idle()
        self.live.clear()
