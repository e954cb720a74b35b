"""One HTTP/2 connection of the lean gRPC server: framing, flow control, limits, dispatch.

Frames are parsed by hand from an asyncio Protocol (uvloop in waypost's processes); request header
blocks are decoded with ``hpack``. A call is routed by ``:path`` to the method its service
registered; a unary handler runs when the request's END_STREAM arrives and, when it answers
inline, its reply (HEADERS + DATA + trailers) joins the others of the same read: everything
``data_received`` answers leaves in one transport write, so a peer that sends many calls per
read (Envoy multiplexes every ext_authz call of a worker on one connection) gets one write back
instead of one per call. Streaming methods run as tasks fed by :mod:`waypost.h2grpc.calls`.

Contracts: nothing the peer sends raises out of ``data_received``: a protocol violation (a
malformed frame, an empty PADDED frame, a window overrun, a bad header block) is a connection
error, answered with GOAWAY and a close; an unexpected bug is logged, then the same. Memory per
connection is bounded by the :class:`~waypost.h2grpc.api.Limits`: request bytes by the
connection window (credit returns only as requests are consumed), streams by
SETTINGS_MAX_CONCURRENT_STREAMS, header blocks by the header list size, and what a client that
does not read leaves queued by the write backlog and pending-control caps.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Mapping
from typing import cast

from waypost.h2grpc import frames as f
from waypost.h2grpc.api import Limits, Status, StreamMethod, UnaryMethod
from waypost.h2grpc.calls import Stream, run_streaming
from waypost.h2grpc.conns import ConnectionSlots
from waypost.h2grpc.frames import ProtocolFault
from waypost.h2grpc.headers import HeaderDecoder
from waypost.log import get_logger

__all__ = ["H2Connection"]

log = get_logger("waypost.h2grpc")

_MAX_FRAME = 16_384
_MAX_WINDOW = (1 << 31) - 1
_U32 = struct.Struct(">I")


class H2Connection(asyncio.Protocol):
    def __init__(
        self, routes: Mapping[bytes, UnaryMethod | StreamMethod], limits: Limits, slots: ConnectionSlots
    ) -> None:
        self.routes = routes
        self.limits = limits
        self._slots = slots
        self.last_active = time.monotonic()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._preface = False
        self._decoder = HeaderDecoder(limits.max_header_list)
        self.streams: dict[int, Stream] = {}
        self._last_stream = 0
        self._block: bytearray | None = None  # a header block awaiting CONTINUATION
        self._block_stream = 0
        self._block_end_stream = False
        self._recv_window = limits.connection_window
        self._unacked = 0  # consumed request bytes not yet credited back
        self.send_window = 65_535
        self.peer_initial_window = 65_535
        self.peer_max_frame = _MAX_FRAME
        self.stream_window = min(limits.max_message + 5, _MAX_WINDOW)  # ours, per stream
        self.blocked: list[Stream] = []  # streams with response bytes waiting for window
        self._paused = False
        self._soon: list[bytes] | None = None  # streamed responses waiting for the loop's next turn
        self._resumed: asyncio.Future[None] | None = None
        self._paused_bytes = 0
        self._paused_control = 0
        self._batch: list[bytes] | None = None  # writes held until data_received returns

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have the same methods.
        self._transport = cast(asyncio.Transport, transport)
        if not self._slots.admit(self):
            self._transport.abort()
            self._transport = None
            return
        self._transport.set_write_buffer_limits(high=256 * 1024)
        _keepalive(self._transport.get_extra_info("socket"))
        limits = self.limits
        ours = (
            (0x3, limits.max_concurrent_streams),
            (0x4, self.stream_window),
            (0x6, limits.max_header_list),
        )
        settings = b"".join(struct.pack(">HI", key, value) for key, value in ours)
        boost = limits.connection_window - 65_535
        self.write(
            f.frame(f.SETTINGS, 0, 0, settings)
            + (f.frame(f.WINDOW_UPDATE, 0, 0, _U32.pack(boost)) if boost > 0 else b"")
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._slots.release(self)
        for stream in list(self.streams.values()):
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.blocked.clear()
        self._soon = None
        self._wake_writers()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._paused_bytes = self._paused_control = 0
        self._credit(0)
        self._wake_writers()

    async def writable(self) -> None:
        """Return once the transport takes writes again (at once unless paused): a streaming
        handler waits here between messages, so a client that reads slowly holds one message in
        the server's buffers, not every message the handler has."""
        if self._paused and self._transport is not None:
            if self._resumed is None:
                self._resumed = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._resumed)

    def _wake_writers(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.done():
            resumed.set_result(None)

    def data_received(self, data: bytes) -> None:
        self._batch = []
        try:
            self._received(data)
        finally:
            self._flush_batch()

    def _received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        try:
            if not self._preface:
                if len(buffer) < len(f.PREFACE):
                    if not f.PREFACE.startswith(bytes(buffer)):
                        raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                    return
                if buffer[: len(f.PREFACE)] != f.PREFACE:
                    raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "not an HTTP/2 preface")
                del buffer[: len(f.PREFACE)]
                self._preface = True
                self.last_active = time.monotonic()
            offset, size = 0, len(buffer)
            while size - offset >= 9:
                word, flags, stream = f.HEADER.unpack_from(buffer, offset)
                length, kind = word >> 8, word & 0xFF
                if length > _MAX_FRAME:
                    raise ProtocolFault(
                        f.ErrorCode.FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE"
                    )
                end = offset + 9 + length
                if end > size:
                    break
                self._frame(kind, flags, stream & 0x7FFFFFFF, bytes(buffer[offset + 9 : end]))
                offset = end
                if self._transport is None:
                    return
            del buffer[:offset]
        except ProtocolFault as fault:
            self.fail(fault.code, str(fault))
        except Exception:
            log.exception("HTTP/2 connection failed")
            self.fail(f.ErrorCode.INTERNAL_ERROR, "internal error")

    # ---- frames
    def _frame(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if self._block is not None and (kind != f.CONTINUATION or stream != self._block_stream):
            raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "header block interrupted")
        if kind == f.DATA:
            self._data(flags, stream, payload)
        elif kind == f.HEADERS:
            self._headers(flags, stream, payload)
        elif kind == f.CONTINUATION:
            if self._block is None:
                raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
            self._block += payload
            self._check_block_size(self._block)
            if flags & f.END_HEADERS:
                block, self._block = self._block, None
                self._header_block(self._block_stream, self._block_end_stream, bytes(block))
        elif kind == f.SETTINGS:
            self._settings(flags, stream, payload)
        elif kind == f.PING:
            if stream != 0 or len(payload) != 8:
                raise ProtocolFault(f.ErrorCode.FRAME_SIZE_ERROR, "malformed PING")
            if not flags & f.ACK:
                self._control(f.frame(f.PING, f.ACK, 0, payload))
        elif kind == f.WINDOW_UPDATE:
            self._window_update(stream, payload)
        elif kind == f.RST_STREAM:
            if stream == 0 or len(payload) != 4:
                raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "malformed RST_STREAM")
            reset = self.streams.pop(stream, None)
            if reset is not None:
                self.consume(reset.held)
                if reset.task is not None:
                    reset.task.cancel()
                if reset in self.blocked:
                    self.blocked.remove(reset)
        elif kind == f.PRIORITY:
            if stream == 0 or len(payload) != 5:
                raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "malformed PRIORITY")
        elif kind == f.GOAWAY:
            self.close_idle()
        elif kind == f.PUSH_PROMISE:
            raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE from a client")
        # Unknown frame types are ignored (RFC 7540 4.1).

    def _settings(self, flags: int, stream: int, payload: bytes) -> None:
        if stream != 0:
            raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & f.ACK:
            if payload:
                raise ProtocolFault(f.ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolFault(f.ErrorCode.FRAME_SIZE_ERROR, "malformed SETTINGS")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == 0x4:
                if value > _MAX_WINDOW:
                    raise ProtocolFault(f.ErrorCode.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for open_stream in self.streams.values():
                    open_stream.send_window += delta
            elif key == 0x5:
                if not _MAX_FRAME <= value <= (1 << 24) - 1:
                    raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "bad SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
        self._control(f.frame(f.SETTINGS, f.ACK, 0, b""))
        self.flush()

    def _window_update(self, stream: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolFault(f.ErrorCode.FRAME_SIZE_ERROR, "malformed WINDOW_UPDATE")
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
        if stream == 0:
            if increment == 0:
                raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > _MAX_WINDOW:
                raise ProtocolFault(f.ErrorCode.FLOW_CONTROL_ERROR, "window overflow")
        else:
            target = self.streams.get(stream)
            if target is None:
                return
            target.send_window += increment
            if increment == 0 or target.send_window > _MAX_WINDOW:
                self.reset(target, f.ErrorCode.FLOW_CONTROL_ERROR)
                return
        self.flush()

    def _headers(self, flags: int, stream: int, payload: bytes) -> None:
        if stream == 0 or not stream & 1:
            raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0 or an even stream")
        start, end = 0, len(payload)
        if flags & f.PADDED:
            if not payload or payload[0] >= len(payload):
                raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "bad padding")
            start, end = 1, end - payload[0]
        if flags & f.PRIORITY_FLAG:
            start += 5
        if start > end:
            raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "bad HEADERS")
        block = payload[start:end]
        if flags & f.END_HEADERS:
            self._header_block(stream, bool(flags & f.END_STREAM), block)
        else:
            self._block = bytearray(block)
            self._block_stream, self._block_end_stream = stream, bool(flags & f.END_STREAM)
            self._check_block_size(self._block)

    def _check_block_size(self, block: bytearray) -> None:
        if len(block) > 2 * self.limits.max_header_list + 1024:
            raise ProtocolFault(f.ErrorCode.ENHANCE_YOUR_CALM, "header block too large")

    def _header_block(self, stream_id: int, end_stream: bool, block: bytes) -> None:
        fields = self._decoder.decode(block)
        existing = self.streams.get(stream_id)
        if existing is not None:  # request trailers
            if not end_stream:
                raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "trailers without END_STREAM")
            existing.end_of_request()
            return
        if stream_id <= self._last_stream:
            return  # a stream already answered and reset: ignored (its HPACK state is applied)
        self._last_stream = stream_id
        if len(self.streams) >= self.limits.max_concurrent_streams:
            self.write(f.rst_stream(stream_id, f.ErrorCode.REFUSED_STREAM))
            return
        self.last_active = time.monotonic()
        path = fields.get(b":path", b"")
        method = self.routes.get(path)
        stream = Stream(self, stream_id, method)
        if fields.get(b":method") != b"POST":
            stream.answer_early(405, Status.UNIMPLEMENTED, "gRPC calls are POST", end_stream)
        elif not fields.get(b"content-type", b"").startswith(b"application/grpc"):
            stream.answer_early(415, Status.INTERNAL, "content-type must be application/grpc", end_stream)
        elif method is None:
            text = path.decode("utf-8", "replace")
            stream.answer_early(200, Status.UNIMPLEMENTED, f"unknown service or method {text}", end_stream)
        else:
            timeout = fields.get(b"grpc-timeout")
            if timeout is not None:
                seconds = f.parse_timeout(timeout)
                if seconds is None:
                    stream.answer_early(200, Status.INTERNAL, "malformed grpc-timeout", end_stream)
                    return
                stream.deadline = time.monotonic() + seconds
            self.streams[stream_id] = stream
            if isinstance(method, StreamMethod):
                run_streaming(stream, method)
            if end_stream:
                stream.end_of_request()

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)
        if flags & f.PADDED:
            if size == 0 or payload[0] >= size:
                raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "bad padding")
            payload = payload[1 : size - payload[0]]
        self._recv_window -= size
        if self._recv_window < 0:
            raise ProtocolFault(f.ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if stream_id > self._last_stream:
                raise ProtocolFault(f.ErrorCode.PROTOCOL_ERROR, "DATA on an idle stream")
            self.consume(size)  # a stream already answered: its bytes are dropped
            if stream is not None:
                self.reset(stream, f.ErrorCode.STREAM_CLOSED)
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self.consume(size)
            self.reset(stream, f.ErrorCode.FLOW_CONTROL_ERROR)
            return
        self.consume(size - len(payload))  # padding
        stream.received(payload)
        if flags & f.END_STREAM and stream.id in self.streams:
            stream.end_of_request()

    # ---- output
    def write_soon(self, data: bytes) -> None:
        """Write ``data`` at the event loop's next turn, with whatever else is written by then: a
        streaming handler answering several requests in one step (an xDS client's first four
        requests, two types changed at once) makes one system call, not one per message."""
        if self._transport is None:
            return
        if self._soon is None:
            self._soon = [data]
            asyncio.get_running_loop().call_soon(self._write_soon)
        else:
            self._soon.append(data)

    def _write_soon(self) -> None:
        soon, self._soon = self._soon, None
        if soon:
            self._write(b"".join(soon))

    def write(self, data: bytes) -> None:
        if self._soon is not None:
            self._write_soon()  # what was written before goes first
        self._write(data)

    def _write(self, data: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        if self._paused:
            self._paused_bytes += len(data)
            if self._paused_bytes > self.limits.max_write_backlog:
                log.warning("client does not read its answers: connection dropped")
                transport.abort()
                self._transport = None
                return
        if self._batch is not None:
            self._batch.append(data)
            return
        transport.write(data)

    def _flush_batch(self) -> None:
        batch, self._batch = self._batch, None
        if batch and self._transport is not None:
            self._transport.write(b"".join(batch))

    def _control(self, data: bytes) -> None:
        if self._paused:
            self._paused_control += 1
            if self._paused_control > self.limits.max_pending_control:
                self.fail(f.ErrorCode.ENHANCE_YOUR_CALM, "control frames flood", abort=True)
                return
        self.write(data)

    def reset(self, stream: Stream, code: int) -> None:
        stream.forget()
        self.write(f.rst_stream(stream.id, code))

    def flush(self) -> None:
        """Send what the flow-control windows now allow of queued response bytes."""
        for stream in list(self.blocked):
            stream.flush()
            if self.send_window <= 0:
                break

    def consume(self, size: int) -> None:
        """``size`` request bytes left the buffers: credit them back to the client (batched)."""
        self._credit(size)

    def _credit(self, size: int) -> None:
        self._unacked += size
        if self._paused or self._unacked < self.limits.connection_window // 4:
            return
        self.write(f.frame(f.WINDOW_UPDATE, 0, 0, _U32.pack(self._unacked)))
        self._recv_window += self._unacked
        self._unacked = 0

    def credit_stream(self, stream: Stream, size: int) -> None:
        """``size`` bytes of ``stream``'s complete messages were taken. The stream's window is
        credited back in batches (a quarter window), not per message: a long-lived stream of small
        messages (xDS ACKs) would otherwise cost a WINDOW_UPDATE each. A message partly received
        gets every pending credit at once (:meth:`Stream._extract`): its sender may be waiting."""
        self.consume(size)
        stream.uncredited += size
        if stream.uncredited >= self.stream_window // 4:
            self.release_stream_credit(stream)

    def release_stream_credit(self, stream: Stream) -> None:
        size, stream.uncredited = stream.uncredited, 0
        if not stream.remote_closed and size:
            stream.recv_window += size
            self.write(f.frame(f.WINDOW_UPDATE, 0, stream.id, _U32.pack(size)))

    # ---- closing
    def busy(self) -> bool:
        return bool(self.streams)

    def established(self) -> bool:
        return self._preface

    def close_idle(self) -> None:
        self.fail(f.ErrorCode.NO_ERROR, "")

    def fail(self, code: int, message: str, *, abort: bool = False) -> None:
        """GOAWAY ``code`` and close; with ``abort``, reset the connection if the peer has not
        read up to the GOAWAY within a second (a flooding client that never reads)."""
        transport = self._transport
        if transport is None:
            return
        if code != f.ErrorCode.NO_ERROR:
            log.warning("HTTP/2 connection error", code=code, reason=message)
        self._write_soon()
        self._flush_batch()  # what was answered before the error still goes out, in order
        if self._transport is None:
            return  # dropped just now: its backlog was over the limit
        transport.write(f.goaway(self._last_stream, code, message.encode()))
        transport.close()
        if abort:
            asyncio.get_running_loop().call_later(1.0, transport.abort)
        self.connection_lost(None)


def _keepalive(sock: socket.socket | None) -> None:
    """TCP keepalive: a client whose host vanished without closing (an xDS stream held for days,
    a registered endpoint) is noticed in about a minute, as grpcio's server pings would."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):  # Linux names; other systems keep their defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
