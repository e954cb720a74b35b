"""The lean server's framing, in process: arbitrary bytes after the preface never raise out of its
connection and never hit its internal-error path (every malformed input gets a protocol-level
answer: GOAWAY with a protocol error code, RST_STREAM, or a gRPC status); the decoded-header-block
cache follows the HPACK table."""

from __future__ import annotations

import asyncio
import struct

import hpack
from hypothesis import given, settings
from hypothesis import strategies as st

from waypost.h2grpc import Limits, Service, UnaryMethod
from waypost.h2grpc.connection import H2Connection
from waypost.h2grpc.conns import ConnectionSlots
from waypost.h2grpc.server import routes, with_health_and_reflection

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ROUTES = routes(with_health_and_reflection([Service("t.S", {"M": UnaryMethod(lambda b: b)})])[0])


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    abort = close

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default  # no socket: nothing to set keepalive on

    def is_closing(self) -> bool:
        return self.closed


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream) + payload


def goaway_codes(written: bytes) -> list[int]:
    codes, offset = [], 0
    while len(written) - offset >= 9:
        length = int.from_bytes(written[offset : offset + 3], "big")
        if written[offset + 3] == 7:
            codes.append(struct.unpack(">I", written[offset + 13 : offset + 17])[0])
        offset += 9 + length
    return codes


frames = st.builds(
    frame,
    st.integers(0, 11),
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3, 5, 2**31 - 1]),
    st.binary(max_size=64),
)
valid_headers = hpack.Encoder().encode(
    [(":method", "POST"), (":path", "/t.S/M"), ("content-type", "application/grpc")]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(frames, max_size=12), st.booleans(), st.integers(1, 40))
def test_random_frames_are_answered_never_raised(chunks: list[bytes], open_stream: bool, split: int) -> None:
    async def run() -> None:
        connection = H2Connection(
            ROUTES, Limits(), ConnectionSlots(max_connections=10, idle_timeout=60, handshake_timeout=10)
        )
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        data = PREFACE + (frame(1, 0x4, 1, valid_headers) if open_stream else b"") + b"".join(chunks)
        for offset in range(0, len(data), split):
            connection.data_received(data[offset : offset + split])
        await asyncio.sleep(0)
        assert 0x2 not in goaway_codes(bytes(transport.written)), "internal error on malformed input"

    asyncio.run(run())


def test_reused_header_block_follows_the_hpack_table() -> None:
    """The same bytes ("dynamic entry 62") mean another :path once the table has changed: the
    decoded-block cache must not answer with the old fields."""
    static = b"\x83" + b"\x0f\x10\x10application/grpc"  # :method POST; content-type, not indexed

    def indexed_path(path: bytes) -> bytes:
        # Literal with incremental indexing, indexed name :path (static 4): becomes entry 62.
        return b"\x44" + bytes((len(path),)) + path + static

    reference = b"\xbe" + static  # indexed field 62: whatever the table holds there now
    message = b"\x00\x00\x00\x00\x02hi"

    async def run() -> list[bytes]:
        connection = H2Connection(
            {
                b"/t.S/M": UnaryMethod(lambda body: b"M:" + body),
                b"/t.S/N": UnaryMethod(lambda body: b"N:" + body),
            },
            Limits(),
            ConnectionSlots(max_connections=10, idle_timeout=60, handshake_timeout=10),
        )
        transport = FakeTransport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        answers = []
        blocks = (indexed_path(b"/t.S/M"), reference, reference, indexed_path(b"/t.S/N"), reference)
        for stream, block in enumerate(blocks):
            transport.written.clear()
            sid = 2 * stream + 1
            data = frame(1, 0x4, sid, block) + frame(0, 0x1, sid, message)
            connection.data_received((PREFACE if stream == 0 else b"") + data)
            written = bytes(transport.written)
            answers.append(b"M:hi" if b"M:hi" in written else b"N:hi" if b"N:hi" in written else written)
        return answers

    assert asyncio.run(run()) == [b"M:hi", b"M:hi", b"M:hi", b"N:hi", b"N:hi"]
