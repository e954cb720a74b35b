"""Arbitrary bytes after the HTTP/2 preface never raise out of the lean server's connection and
never hit its internal-error path: every malformed input is a protocol-level answer (GOAWAY with a
protocol error code, RST_STREAM, or a gRPC status)."""

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
