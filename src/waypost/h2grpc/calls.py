"""One gRPC call on an HTTP/2 stream: request bytes in, the response out under flow control.

A :class:`Stream` collects its request DATA (bounded by ``Limits.max_message``), hands a unary
request to its handler once the client half-closes, or feeds a streaming handler message by
message (stream window credited back only as messages are taken, at most ``_QUEUE`` waiting).
Responses: HEADERS, DATA frames as the connection and stream windows allow, trailers with
``grpc-status``. A deadline (``grpc-timeout``) cancels an awaited answer and replies
DEADLINE_EXCEEDED. Every path ends in :meth:`Stream.finish`, exactly once.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING

from waypost.h2grpc import frames as f
from waypost.h2grpc.api import GrpcError, Status, StreamMethod, UnaryMethod
from waypost.log import get_logger

if TYPE_CHECKING:
    from waypost.h2grpc.connection import H2Connection

__all__ = ["Stream", "call_unary", "run_streaming", "run_unary_async", "status_block"]

log = get_logger("waypost.h2grpc")

_LENGTH = struct.Struct(">I")
_TRAILERS_OK = f.trailers(Status.OK)
_QUEUE = 64


def status_block(http_status: int) -> bytes:
    if http_status == 200:
        return f.RESPONSE_HEADERS
    # :status as a literal with the static table's name index 8.
    return b"\x08\x03" + str(http_status).encode() + f.RESPONSE_HEADERS[1:]


class Stream:
    __slots__ = (
        "body",
        "conn",
        "deadline",
        "done",
        "drained",
        "expired",
        "headers_sent",
        "held",
        "id",
        "method",
        "outbound",
        "queue",
        "recv_window",
        "remote_closed",
        "send_window",
        "task",
        "trailer",
        "uncredited",
    )

    def __init__(self, conn: H2Connection, stream_id: int, method: UnaryMethod | StreamMethod | None) -> None:
        self.conn = conn
        self.id = stream_id
        self.method = method
        self.body = bytearray()
        self.held = 0  # request bytes buffered, not yet credited back to the client
        self.uncredited = 0  # bytes of taken messages not yet credited back (batched)
        self.recv_window = conn.stream_window
        self.send_window = conn.peer_initial_window
        self.remote_closed = False
        self.deadline: float | None = None
        self.expired = False
        self.task: asyncio.Future[None] | None = None
        self.outbound = bytearray()
        self.trailer: bytes | None = None
        self.headers_sent = False
        self.queue: asyncio.Queue[bytes | None] | None = None
        self.drained: asyncio.Future[None] | None = None
        self.done = False

    # ---- request
    def answer_early(self, http_status: int, status: Status, message: str, end_stream: bool) -> None:
        """A call refused before any handler runs (never registered in the connection)."""
        block = status_block(http_status) + f.trailers(status, message)
        self.conn.write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, self.id, block))
        if not end_stream:
            self.conn.write(f.rst_stream(self.id, f.ErrorCode.NO_ERROR))

    def received(self, payload: bytes) -> None:
        self.held += len(payload)
        body = self.body
        body += payload
        if self.queue is not None:
            self._extract()
        elif len(body) >= 5 and _LENGTH.unpack_from(body, 1)[0] > self.conn.limits.max_message:
            self.reply_error(Status.RESOURCE_EXHAUSTED, "request message too large")

    def _extract(self) -> None:
        body, queue = self.body, self.queue
        assert queue is not None
        while len(body) >= 5 and not self.done:
            length = _LENGTH.unpack_from(body, 1)[0]
            if body[0] != 0:
                self.reply_error(Status.UNIMPLEMENTED, "compressed messages are not supported")
            elif length > self.conn.limits.max_message:
                self.reply_error(Status.RESOURCE_EXHAUSTED, "request message too large")
            elif queue.qsize() >= _QUEUE:
                self.reply_error(Status.RESOURCE_EXHAUSTED, "too many request messages waiting")
            elif len(body) >= 5 + length:
                queue.put_nowait(bytes(body[5 : 5 + length]))
                del body[: 5 + length]
                self.held -= 5 + length
                self.conn.credit_stream(self, 5 + length)
                continue
            break
        if body and self.uncredited and not self.done:
            self.conn.release_stream_credit(self)  # the sender may be blocked mid-message

    def end_of_request(self) -> None:
        self.remote_closed = True
        if self.queue is not None:
            self._extract()
            if self.body and not self.done:
                self.reply_error(Status.INTERNAL, "incomplete request message")
            self.queue.put_nowait(None)
            return
        body, method = self.body, self.method
        self.conn.credit_stream(self, self.held)
        self.held = 0
        if len(body) < 5 or _LENGTH.unpack_from(body, 1)[0] != len(body) - 5:
            self.reply_error(Status.INTERNAL, "a unary call needs exactly one request message")
        elif body[0] != 0:
            # No compression is supported; the client may retry with grpc-encoding: identity.
            self.reply_error(Status.UNIMPLEMENTED, "compressed messages are not supported")
        elif self.deadline is not None and time.monotonic() >= self.deadline:
            self.reply_error(Status.DEADLINE_EXCEEDED, "deadline exceeded")
        else:
            assert isinstance(method, UnaryMethod)
            call_unary(self, method, bytes(body[5:]))

    async def requests(self) -> AsyncIterator[bytes]:
        assert self.queue is not None
        while True:
            message = await self.queue.get()
            if message is None:
                return
            yield message

    # ---- response
    def reply(self, message: bytes) -> None:
        if self.done:
            return
        conn = self.conn
        data = b"\x00" + _LENGTH.pack(len(message)) + message
        if not conn.blocked and len(data) <= min(conn.send_window, self.send_window, conn.peer_max_frame):
            conn.send_window -= len(data)
            conn.write(
                f.frame(f.HEADERS, f.END_HEADERS, self.id, f.RESPONSE_HEADERS)
                + f.frame(f.DATA, 0, self.id, data)
                + f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, self.id, _TRAILERS_OK)
            )
            self.finish()
            return
        self._start_response()
        self.outbound += data
        self.trailer = _TRAILERS_OK
        self._queue_out()

    async def send(self, message: bytes) -> None:
        """Streaming: one response message; returns once the windows let it all out."""
        if self.done:
            raise GrpcError(Status.CANCELLED, "call ended")
        await self.conn.writable()
        if self.done:
            raise GrpcError(Status.CANCELLED, "call ended")
        head = b""
        if not self.headers_sent:  # written with the first message: one write, not two
            self.headers_sent = True
            head = f.frame(f.HEADERS, f.END_HEADERS, self.id, f.RESPONSE_HEADERS)
        self.outbound += b"\x00" + _LENGTH.pack(len(message)) + message
        if self not in self.conn.blocked:
            self.conn.blocked.append(self)
        self.flush(head, soon=True)
        while self.outbound and not self.done:
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained

    def reply_end(self) -> None:
        """Streaming: the handler returned; trailers after the queued messages."""
        if self.done:
            return
        if self.outbound:
            self.trailer = _TRAILERS_OK
            return
        if self.headers_sent:
            self.conn.write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, self.id, _TRAILERS_OK))
        else:
            block = f.RESPONSE_HEADERS + _TRAILERS_OK
            self.conn.write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, self.id, block))
        self.finish()

    def reply_error(self, status: Status, message: str) -> None:
        if self.done:
            return
        self.outbound.clear()
        block = f.trailers(status, message)
        if not self.headers_sent:
            block = f.RESPONSE_HEADERS + block
        self.conn.write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, self.id, block))
        self.finish()

    def _start_response(self) -> None:
        if not self.headers_sent:
            self.headers_sent = True
            self.conn.write(f.frame(f.HEADERS, f.END_HEADERS, self.id, f.RESPONSE_HEADERS))

    def _queue_out(self) -> None:
        if self not in self.conn.blocked:
            self.conn.blocked.append(self)
        self.flush()

    def flush(self, head: bytes = b"", *, soon: bool = False) -> None:
        """Write what the windows allow of the queued response (after ``head``), in one write;
        ``soon``: at the loop's next turn (:meth:`H2Connection.write_soon`)."""
        conn, out = self.conn, self.outbound
        chunks = [head]
        while out:
            size = min(len(out), conn.send_window, self.send_window, conn.peer_max_frame)
            if size <= 0:
                break
            chunks.append(f.frame(f.DATA, 0, self.id, bytes(out[:size])))
            del out[:size]
            conn.send_window -= size
            self.send_window -= size
        if len(chunks) > 1 or head:
            (conn.write_soon if soon else conn.write)(b"".join(chunks))
        if out:
            return
        if self in conn.blocked:
            conn.blocked.remove(self)
        if self.trailer is not None:
            conn.write(f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, self.id, self.trailer))
            self.finish()
        self._wake()

    def _wake(self) -> None:
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def finish(self) -> None:
        """The response is complete: the stream leaves the connection (RST if the client still sends)."""
        if self.done:
            return
        self.forget()
        if not self.remote_closed:
            self.conn.write(f.rst_stream(self.id, f.ErrorCode.NO_ERROR))

    def forget(self) -> None:
        self.done = True
        conn = self.conn
        conn.streams.pop(self.id, None)
        if self in conn.blocked:
            conn.blocked.remove(self)
        conn.consume(self.held)
        self.held = 0
        conn.last_active = time.monotonic()
        self._wake()
        if self.task is not None and not self.task.done() and self.task is not asyncio.current_task():
            self.task.cancel()


def call_unary(stream: Stream, method: UnaryMethod, message: bytes) -> None:
    """Run a unary handler: an inline answer is written at once, an awaitable one by a task."""
    try:
        answer = method.handler(message)
    except GrpcError as error:
        stream.reply_error(error.status, error.message)
        return
    except Exception:
        log.exception("gRPC handler failed")
        stream.reply_error(Status.INTERNAL, "internal error")
        return
    if isinstance(answer, bytes):
        stream.reply(answer)
    else:
        run_unary_async(stream, answer)


def _arm_deadline(stream: Stream, task: asyncio.Future[None]) -> None:
    stream.task = task
    if stream.deadline is None:
        return

    def expire() -> None:
        if not task.done():
            stream.expired = True
            task.cancel()

    handle = asyncio.get_running_loop().call_at(
        asyncio.get_running_loop().time() + max(0.0, stream.deadline - time.monotonic()), expire
    )
    task.add_done_callback(lambda _: handle.cancel())


async def _guard(stream: Stream, call: Awaitable[bytes | None]) -> None:
    try:
        result = await call
    except GrpcError as error:
        stream.reply_error(error.status, error.message)
    except asyncio.CancelledError:
        if not stream.expired:
            raise
        stream.reply_error(Status.DEADLINE_EXCEEDED, "deadline exceeded")
    except Exception:
        log.exception("gRPC handler failed")
        stream.reply_error(Status.INTERNAL, "internal error")
    else:
        if isinstance(result, bytes):
            stream.reply(result)
        else:
            stream.reply_end()


def run_unary_async(stream: Stream, answer: Awaitable[bytes]) -> None:
    _arm_deadline(stream, asyncio.ensure_future(_guard(stream, answer)))


def run_streaming(stream: Stream, method: StreamMethod) -> None:
    stream.queue = asyncio.Queue()

    async def call() -> None:
        await method.handler(stream.requests(), stream.send)

    _arm_deadline(stream, asyncio.ensure_future(_guard(stream, call())))
