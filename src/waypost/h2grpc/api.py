"""What a service registers with the lean gRPC server, and the limits it serves under.

Handlers take and return serialized messages (bytes): each service parses and encodes its own
protobufs, so the server never imports them. A handler signals a gRPC error by raising
:class:`GrpcError`; any other exception becomes INTERNAL (and is logged), never a broken
connection.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field

__all__ = ["GrpcError", "Limits", "Send", "Service", "Status", "StreamMethod", "UnaryMethod"]


class Status(enum.IntEnum):
    """gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14


class GrpcError(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Send = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class UnaryMethod:
    """One request message in, one response message out; answered inline when it returns bytes."""

    handler: Callable[[bytes], bytes | Awaitable[bytes]]


@dataclass(frozen=True)
class StreamMethod:
    """Request messages as an async iterator; responses sent with ``send`` (bidi or server streaming)."""

    handler: Callable[[AsyncIterator[bytes], Send], Awaitable[None]]


@dataclass(frozen=True)
class Service:
    name: str
    """Fully qualified gRPC service name, e.g. ``envoy.service.auth.v3.Authorization``."""
    methods: Mapping[str, UnaryMethod | StreamMethod]
    ready: Callable[[], bool] = field(default=lambda: True)
    """Health: SERVING while this is true (e.g. once a valid policy is applied)."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one client can make the server hold. Exceeding a stream limit fails that call with a
    gRPC status; abusing the connection (floods, malformed frames) closes it with GOAWAY."""

    max_concurrent_streams: int = 1024
    """Advertised in SETTINGS; a stream beyond it is refused (RST_STREAM REFUSED_STREAM)."""
    max_message: int = 9 * 1024 * 1024
    """Largest request message; a larger one is answered RESOURCE_EXHAUSTED. (A CheckRequest
    carries the client's request headers, at most 60 KiB by Envoy's default, and for body checks
    a body of at most 8 MiB: ``max_body_bytes``.)"""
    max_header_list: int = 16 * 1024
    """Decoded request header list (RFC 7540 SETTINGS_MAX_HEADER_LIST_SIZE); beyond: GOAWAY."""
    connection_window: int = 10 * 1024 * 1024
    """Unconsumed request bytes buffered per connection (the HTTP/2 connection flow-control window);
    at least one largest message, which is credited back only once it is consumed."""
    max_pending_control: int = 1024
    """PING/SETTINGS answers queued while the client does not read: beyond, GOAWAY ENHANCE_YOUR_CALM."""
    max_write_backlog: int = 8 * 1024 * 1024
    """Bytes queued for a client that does not read: beyond, the connection is dropped."""
    idle_timeout: float = 300.0
    """Seconds a connection may stay without any call in flight."""
    handshake_timeout: float = 10.0
    """Seconds to receive the HTTP/2 preface."""
    max_connections: int = 1000
    """Open connections per port; at the cap the longest-idle one is closed for a new one."""
