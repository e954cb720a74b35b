"""A minimal gRPC-over-HTTP/2 (h2c) server for the one RPC Envoy calls per request: ShouldRateLimit.

Why not grpcio: its Python aio server spends about 400 us of CPU per unary call here (measured in
``bench/ratelimit.py``: ~2,400 no-op calls per CPU second), four times the budget of 10,000
decisions per second per core. This server speaks just enough HTTP/2 for a gRPC unary call on an
asyncio Protocol (uvloop in ``waypost serve``): it never decodes request headers (every stream on
this port is ShouldRateLimit; so HPACK state needs no tracking), answers with literal,
never-indexed header fields, honours flow control both ways, and answers PING and SETTINGS.

It answers only ShouldRateLimit, whatever the path; grpcio's server stays available
(``--ratelimit-grpcio``) for anyone who wants the complete gRPC stack on the port.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from typing import cast

from envoy.service.ratelimit.v3 import rls_pb2

from waypost.log import get_logger
from waypost.peers import PeerFilter

__all__ = ["H2RateLimitServer", "start_h2_server"]

log = get_logger("waypost.ratelimit")

_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE, _CONTINUATION = (
    0,
    1,
    3,
    4,
    6,
    7,
    8,
    9,
)
_END_STREAM, _ACK, _END_HEADERS, _PADDED, _PRIORITY = 0x1, 0x1, 0x4, 0x8, 0x20
_HEADER = struct.Struct(">I B I")  # length (24 bits, packed with type), flags, stream id
_MAX_FRAME = 16_384
_MAX_MESSAGE = 1 << 20
_OUR_STREAM_WINDOW = 1 << 20
_CONNECTION_WINDOW_BOOST = (1 << 24) - 65_535

# HPACK: ":status: 200" is static entry 8; content-type is static name 31 (literal, not indexed).
_RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + bytes([16]) + b"application/grpc"


def _literal(name: bytes, value: bytes) -> bytes:
    # Literal header field without indexing, new name (RFC 7541 6.2.2); short strings only.
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


_TRAILERS_OK = _literal(b"grpc-status", b"0")


def _frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return _HEADER.pack((len(payload) << 8) | kind, flags, stream) + payload


Decide = Callable[[rls_pb2.RateLimitRequest], bytes | Awaitable[bytes]]
"""Answer one parsed request with a serialized RateLimitResponse (inline or awaited)."""


class _Connection(asyncio.Protocol):
    def __init__(self, decide: Decide, registry: set[_Connection]) -> None:
        self._decide = decide
        self._registry = registry
        self._buffer = bytearray()
        self._preface = False
        self._streams: dict[int, bytearray] = {}
        self._transport: asyncio.Transport | None = None
        self._received = 0  # DATA bytes since our last connection WINDOW_UPDATE
        self._send_window = 65_535
        self._peer_stream_window = 65_535
        self._pending: list[tuple[int, bytes]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self._transport = cast(asyncio.Transport, transport)
        self._registry.add(self)
        settings = struct.pack(">HI", 0x3, 10_000) + struct.pack(">HI", 0x4, _OUR_STREAM_WINDOW)
        self._transport.write(
            _frame(_SETTINGS, 0, 0, settings)
            + _frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", _CONNECTION_WINDOW_BOOST))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._registry.discard(self)
        for task in self._tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        if not self._preface:
            if len(buffer) < len(_PREFACE):
                return
            if buffer[: len(_PREFACE)] != _PREFACE:
                self._close()
                return
            del buffer[: len(_PREFACE)]
            self._preface = True
        offset = 0
        size = len(buffer)
        while size - offset >= 9:
            word, flags, stream = _HEADER.unpack_from(buffer, offset)
            length, kind = word >> 8, word & 0xFF
            end = offset + 9 + length
            if end > size:
                break
            self._frame_received(kind, flags, stream & 0x7FFFFFFF, bytes(buffer[offset + 9 : end]))
            offset = end
            if self._transport is None:
                return
        del buffer[:offset]

    def _frame_received(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == _DATA:
            self._received += len(payload)
            if self._received >= 1 << 23:
                self._write(_frame(_WINDOW_UPDATE, 0, 0, struct.pack(">I", self._received)))
                self._received = 0
            body = self._streams.get(stream)
            if body is None:
                return
            if flags & _PADDED:
                payload = payload[1 : len(payload) - payload[0]]
            body += payload
            if len(body) > _MAX_MESSAGE + 5:
                del self._streams[stream]
                self._reply_error(stream, 8, "request too large")  # RESOURCE_EXHAUSTED
            elif flags & _END_STREAM:
                self._request(stream, self._streams.pop(stream))
        elif kind == _HEADERS:
            # Headers are not decoded: this port serves one method (see the module docstring).
            if flags & _END_STREAM:
                self._request(stream, bytearray())
            else:
                self._streams[stream] = bytearray()
        elif kind == _SETTINGS:
            if not flags & _ACK:
                for i in range(0, len(payload) - 5, 6):
                    key, value = struct.unpack_from(">HI", payload, i)
                    if key == 0x4:
                        self._peer_stream_window = value
                self._write(_frame(_SETTINGS, _ACK, 0, b""))
        elif kind == _PING:
            if not flags & _ACK:
                self._write(_frame(_PING, _ACK, 0, payload))
        elif kind == _WINDOW_UPDATE:
            if stream == 0 and len(payload) == 4:
                self._send_window += struct.unpack(">I", payload)[0] & 0x7FFFFFFF
                self._flush_pending()
        elif kind == _RST_STREAM:
            self._streams.pop(stream, None)
        elif kind == _GOAWAY:
            self._close()
        # CONTINUATION (headers we do not decode), PRIORITY and unknown frames: nothing to do.

    def _request(self, stream: int, body: bytearray) -> None:
        if len(body) < 5:
            request = rls_pb2.RateLimitRequest()
        else:
            if body[0] != 0:
                self._reply_error(stream, 12, "compressed messages are not supported")  # UNIMPLEMENTED
                return
            try:
                request = rls_pb2.RateLimitRequest.FromString(bytes(body[5:]))
            except Exception:
                self._reply_error(stream, 3, "malformed RateLimitRequest")  # INVALID_ARGUMENT
                return
        try:
            answer = self._decide(request)
        except Exception:
            log.exception("rate-limit decision failed")
            self._reply_error(stream, 13, "internal error")
            return
        if isinstance(answer, bytes):
            self._reply(stream, answer)
        else:
            task = asyncio.ensure_future(self._finish(stream, answer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _finish(self, stream: int, answer: Awaitable[bytes]) -> None:
        try:
            body = await answer
        except Exception:
            log.exception("rate-limit decision failed")
            self._reply_error(stream, 13, "internal error")
            return
        self._reply(stream, body)

    def _reply(self, stream: int, message: bytes) -> None:
        data = b"\x00" + struct.pack(">I", len(message)) + message
        if len(data) > min(_MAX_FRAME, self._peer_stream_window):
            self._reply_error(stream, 8, "response too large")
            return
        if self._send_window < len(data) or self._pending:
            self._pending.append((stream, data))
            return
        self._send(stream, data)

    def _send(self, stream: int, data: bytes) -> None:
        self._send_window -= len(data)
        self._write(
            _frame(_HEADERS, _END_HEADERS, stream, _RESPONSE_HEADERS)
            + _frame(_DATA, 0, stream, data)
            + _frame(_HEADERS, _END_HEADERS | _END_STREAM, stream, _TRAILERS_OK)
        )

    def _flush_pending(self) -> None:
        while self._pending and self._send_window >= len(self._pending[0][1]):
            stream, data = self._pending.pop(0)
            self._send(stream, data)

    def _reply_error(self, stream: int, code: int, message: str) -> None:
        block = (
            _RESPONSE_HEADERS
            + _literal(b"grpc-status", str(code).encode())
            + _literal(b"grpc-message", message.encode())
        )
        self._write(_frame(_HEADERS, _END_HEADERS | _END_STREAM, stream, block))

    def _write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def close(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


class H2RateLimitServer:
    def __init__(self, server: asyncio.Server, connections: set[_Connection]) -> None:
        self._server = server
        self._connections = connections

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self._server.close()
        # Envoy keeps its connections open; close them, or wait_closed() waits for Envoy.
        for connection in list(self._connections):
            connection.close()
        await self._server.wait_closed()


async def start_h2_server(
    decide: Decide, host: str, port: int, *, peers: PeerFilter | None = None
) -> H2RateLimitServer:
    loop = asyncio.get_running_loop()
    connections: set[_Connection] = set()

    def factory() -> asyncio.Protocol:
        return _Connection(decide, connections)

    server = await loop.create_server(
        peers.protocol_factory(factory) if peers is not None else factory, host, port
    )
    return H2RateLimitServer(server, connections)
