"""The decision core over plain HTTP/1.1: Envoy's ext_authz HTTP mode, on uvloop + httptools.

Envoy sends each request's method and headers to ``/_waypost/<route><original path>`` (the
per-route ``path_prefix`` the compiler sets, so the route is known without re-matching). The
answer is 200 to allow, its ``x-waypost-*`` headers going to the upstream and its ``consumer`` /
``plan`` headers becoming dynamic metadata (the same contract as the gRPC service); anything else
is a denial Envoy hands to the client as is. Answers are encoded once per distinct decision.
``GET /healthz`` answers 200 once a policy version is loaded, 503 before (Envoy's health check).

It exists for speed: a Python gRPC call costs several times an HTTP/1.1 exchange on a kept-alive
connection. Policies that need the peer certificate (mtls) or every header (custom plugins) are
served over gRPC (the compiler takes care of it).

Limits: at most ``MAX_HEADERS`` header fields and ``MAX_HEADER_BYTES`` of header text per request
(431, then close; repeated headers are joined once, at the end), a URL of ``MAX_URL`` bytes (414)
and no body beyond ``MAX_BODY`` (413); connections share the port's
:class:`~waypost.h2grpc.conns.ConnectionSlots` (a cap, idle ones closed).
"""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from typing import Any, cast

import httptools

from waypost.contract import AUTHZ_HTTP_HEALTH_PATH, AUTHZ_HTTP_PATH_PREFIX, METADATA_CONSUMER, METADATA_PLAN
from waypost.filters.authz.core import AuthzCore
from waypost.filters.authz.decision import AuthRequest, Decision
from waypost.h2grpc import Limits
from waypost.h2grpc.conns import ConnectionSlots
from waypost.log import get_logger
from waypost.peers import PeerFilter

__all__ = [
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "PATH_PREFIX",
    "AuthzHttpProtocol",
    "encode_http",
    "start_authz_http",
]

log = get_logger("waypost.authz.http")

PATH_PREFIX = AUTHZ_HTTP_PATH_PREFIX
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    429: "Too Many Requests",
    500: "Internal Server Error",
}
_CACHE_LIMIT = 10_000
MAX_HEADERS = 256
MAX_HEADER_BYTES = 96 * 1024
MAX_URL = 16 * 1024
MAX_BODY = 64 * 1024


def _refusal(status: int, reason: str) -> bytes:
    return f"HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".encode()


_HEALTHY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_UNHEALTHY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
_BAD_REQUEST = _refusal(400, "Bad Request")
_TOO_MANY_HEADERS = _refusal(431, "Request Header Fields Too Large")
_URL_TOO_LONG = _refusal(414, "URI Too Long")
_BODY_TOO_LARGE = _refusal(413, "Content Too Large")


class _Refused(Exception):
    def __init__(self, answer: bytes) -> None:
        self.answer = answer


def encode_http(decision: Decision) -> bytes:
    reason = _REASONS.get(decision.status, "Service Unavailable")
    lines = [f"HTTP/1.1 {decision.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in decision.headers]
    # Allowed: the rate-limit headers for the client (Envoy's allowed_client_headers_on_success).
    lines += [f"{name}: {value}" for name, value in decision.client_headers]
    if decision.allowed and decision.consumer:
        lines.append(f"{METADATA_CONSUMER}: {decision.consumer}")
        if decision.plan:
            lines.append(f"{METADATA_PLAN}: {decision.plan}")
    lines.append(f"content-length: {len(decision.body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + decision.body


class _Cache:
    def __init__(self) -> None:
        self.encoded: dict[Decision, bytes] = {}
        self.head: dict[Decision, bytes] = {}

    def get(self, decision: Decision, *, head: bool = False) -> bytes:
        extra = decision.client_headers
        if extra:
            # A counted quota's headers change with almost every request: they are added to the
            # reused answer without them, before its blank line (header order carries no meaning).
            base = self.get(
                Decision(
                    decision.status,
                    decision.reason,
                    decision.consumer,
                    decision.plan,
                    decision.headers,
                    decision.body,
                ),
                head=head,
            )
            cut = len(base) - (0 if head else len(decision.body)) - 2
            lines = "".join(f"{name}: {value}\r\n" for name, value in extra).encode("latin-1")
            return base[:cut] + lines + base[cut:]
        cache = self.head if head else self.encoded
        encoded = cache.get(decision)
        if encoded is None:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            encoded = encode_http(decision)
            if head:
                # Envoy forwards the client's method: an answer to HEAD carries no body, or the
                # connection's next answer would start inside this one.
                encoded = encoded[: len(encoded) - len(decision.body)]
            cache[decision] = encoded
        return encoded


class AuthzHttpProtocol(asyncio.Protocol):
    """One connection from Envoy: requests in order, keep-alive, no bodies expected."""

    __slots__ = (
        "_cache",
        "_core",
        "_header_bytes",
        "_headers",
        "_parser",
        "_pending",
        "_repeats",
        "_seen",
        "_slots",
        "_transport",
        "_url",
        "last_active",
    )

    def __init__(self, core: AuthzCore, cache: _Cache, slots: ConnectionSlots) -> None:
        self._core = core
        self._cache = cache
        self._slots = slots
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._headers: dict[str, str] = {}
        self._repeats: dict[str, list[str]] = {}
        self._header_bytes = 0
        self._url = b""
        self._pending = 0  # decisions awaited (never closed for idleness meanwhile)
        self._seen = False  # a first request arrived
        self.last_active = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's: same methods, no subclass
        if not self._slots.admit(self):
            self._transport.abort()
            self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            # httptools wraps what a callback raises: a limit's _Refused carries its answer.
            refused = error.__cause__ or error.__context__
            self._refuse(refused.answer if isinstance(refused, _Refused) else _BAD_REQUEST)
        except _Refused as refused:
            self._refuse(refused.answer)

    def _refuse(self, answer: bytes) -> None:
        if self._transport is not None:
            self._transport.write(answer)
            self._transport.close()
            self._transport = None

    # ConnectionSlots.Tracked
    def busy(self) -> bool:
        return self._pending > 0

    def established(self) -> bool:
        return self._seen

    def close_idle(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = {}
        self._repeats = {}
        self._header_bytes = 0
        self._url = b""
        self._seen = True
        self.last_active = time.monotonic()

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL:
            raise _Refused(_URL_TOO_LONG)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > MAX_HEADER_BYTES:
            raise _Refused(_TOO_MANY_HEADERS)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        if previous is None:
            if len(self._headers) >= MAX_HEADERS:
                raise _Refused(_TOO_MANY_HEADERS)
            self._headers[key] = text
            return
        # Repeated fields are collected and joined once (on_headers_complete): joining at each
        # repetition costs quadratic time in their number (160k repetitions: a 1 s stall).
        repeats = self._repeats.setdefault(key, [previous])
        if len(repeats) >= MAX_HEADERS:
            raise _Refused(_TOO_MANY_HEADERS)
        repeats.append(text)

    def on_headers_complete(self) -> None:
        for key, values in self._repeats.items():
            self._headers[key] = ", ".join(values)

    def on_body(self, body: bytes) -> None:
        self._header_bytes += len(body)
        if self._header_bytes > MAX_HEADER_BYTES + MAX_BODY:
            raise _Refused(_BODY_TOO_LARGE)

    def on_message_complete(self) -> None:
        transport = self._transport
        if transport is None:
            return
        url = self._url.decode("latin-1")
        if url == AUTHZ_HTTP_HEALTH_PATH:
            # Envoy's active health check (several --authz-http-address endpoints).
            transport.write(_HEALTHY if self._core.version is not None else _UNHEALTHY)
            return
        if not url.startswith(PATH_PREFIX):
            transport.write(_BAD_REQUEST)
            transport.close()
            return
        route, slash, path = url[len(PATH_PREFIX) :].partition("/")
        headers = self._headers
        method = self._parser.get_method().decode("latin-1")
        request = AuthRequest(
            route=route,
            policies=(),
            method=method,
            path=slash + path,
            headers=headers,
            host=headers.get("host", ""),
        )
        decision = self._core.decide(request)
        if inspect.isawaitable(decision):
            # Rare (async plugins are compiled to gRPC); Envoy does not pipeline, order is safe.
            self._pending += 1
            task = asyncio.ensure_future(decision)
            task.add_done_callback(lambda done: self._write_later(done, method == "HEAD"))
            return
        transport.write(self._cache.get(decision, head=method == "HEAD"))
        self.last_active = time.monotonic()

    def _write_later(self, done: asyncio.Future[Decision], head: bool) -> None:
        self._pending -= 1
        self.last_active = time.monotonic()
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.write(self._cache.get(done.result(), head=head))
        except Exception:
            log.exception("authz decision failed")
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._slots.release(self)


async def start_authz_http(
    core: AuthzCore, host: str, port: int, *, limits: Limits | None = None, peers: PeerFilter | None = None
) -> tuple[Any, int]:
    """Listen on ``host:port``; the connection cap and idle timeout are ``limits``' (the gRPC port's);
    ``peers``: only those client networks."""
    limits = limits or Limits()
    loop = asyncio.get_running_loop()
    cache = _Cache()
    slots = ConnectionSlots(
        max_connections=limits.max_connections,
        idle_timeout=limits.idle_timeout,
        handshake_timeout=limits.handshake_timeout,
    )

    def factory() -> asyncio.Protocol:
        return AuthzHttpProtocol(core, cache, slots)

    server = await loop.create_server(
        peers.protocol_factory(factory) if peers is not None else factory,
        host,
        port,
        reuse_port=True,
        backlog=1024,
    )
    for sock in server.sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server, server.sockets[0].getsockname()[1]
