"""HTTP/2 frame constants and the few encoders the server writes by hand.

Responses use only static-table indices and literal header fields without indexing (RFC 7541
6.2.2), so the server keeps no HPACK encoder state; requests are decoded with the ``hpack``
library (the client's dynamic table must be tracked).
"""

from __future__ import annotations

import struct
from urllib.parse import quote

__all__ = [
    "ACK",
    "CONTINUATION",
    "DATA",
    "END_HEADERS",
    "END_STREAM",
    "GOAWAY",
    "HEADER",
    "HEADERS",
    "PADDED",
    "PING",
    "PREFACE",
    "PRIORITY",
    "PRIORITY_FLAG",
    "PUSH_PROMISE",
    "RESPONSE_HEADERS",
    "RST_STREAM",
    "SETTINGS",
    "WINDOW_UPDATE",
    "ErrorCode",
    "ProtocolFault",
    "frame",
    "goaway",
    "literal",
    "parse_timeout",
    "rst_stream",
    "trailers",
]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
HEADER = struct.Struct(">I B I")  # length (24 bits, packed with type), flags, stream id


class ErrorCode:
    """RFC 7540 section 7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    COMPRESSION_ERROR = 0x9
    ENHANCE_YOUR_CALM = 0xB


class ProtocolFault(Exception):
    """A connection error (RFC 7540 5.4.1): GOAWAY with ``code``, then close."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return HEADER.pack((len(payload) << 8) | kind, flags, stream) + payload


def goaway(last_stream: int, code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, struct.pack(">II", last_stream, code) + debug[:256])


def rst_stream(stream: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, stream, struct.pack(">I", code))


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    # RFC 7541 5.1: an integer with an N-bit prefix; ``first`` holds the representation's flag bits.
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    """Literal header field without indexing, new name, no Huffman coding (RFC 7541 6.2.2)."""
    return b"\x00" + _integer(len(name), 7, 0) + name + _integer(len(value), 7, 0) + value


# ":status: 200" is static entry 8; content-type is static name 31 (literal, not indexed).
RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + _integer(16, 7, 0) + b"application/grpc"


def trailers(status: int, message: str = "") -> bytes:
    block = literal(b"grpc-status", str(status).encode())
    if message:
        # grpc-message is percent-encoded UTF-8 (the gRPC HTTP/2 protocol spec).
        block += literal(b"grpc-message", quote(message[:1024], safe=" !#$&'()*+,/:;=?@[]~").encode())
    return block


_UNITS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """``grpc-timeout`` in seconds (``100m``, ``5S``: at most 8 digits and a unit); None if malformed."""
    unit = _UNITS.get(value[-1:])
    digits = value[:-1]
    if unit is None or not 0 < len(digits) <= 8 or not digits.isdigit():
        return None
    return int(digits) * unit
