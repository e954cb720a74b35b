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
"""

from __future__ import annotations

import asyncio
import inspect
import socket
from typing import Any

import httptools

from waypost.contract import AUTHZ_HTTP_HEALTH_PATH, AUTHZ_HTTP_PATH_PREFIX, METADATA_CONSUMER, METADATA_PLAN
from waypost.filters.authz.core import AuthRequest, AuthzCore, Decision
from waypost.log import get_logger

__all__ = ["PATH_PREFIX", "AuthzHttpProtocol", "encode_http", "start_authz_http"]

log = get_logger("waypost.authz.http")

PATH_PREFIX = AUTHZ_HTTP_PATH_PREFIX
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    500: "Internal Server Error",
}
_CACHE_LIMIT = 10_000
_HEALTHY = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"
_UNHEALTHY = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def encode_http(decision: Decision) -> bytes:
    reason = _REASONS.get(decision.status, "Service Unavailable")
    lines = [f"HTTP/1.1 {decision.status} {reason}"]
    lines += [f"{name}: {value}" for name, value in decision.headers]
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

    __slots__ = ("_cache", "_core", "_headers", "_method", "_parser", "_transport", "_url")

    def __init__(self, core: AuthzCore, cache: _Cache) -> None:
        self._core = core
        self._cache = cache
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._headers: dict[str, str] = {}
        self._url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(_BAD_REQUEST)
                self._transport.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = {}
        self._url = b""

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        previous = self._headers.get(key)
        self._headers[key] = text if previous is None else f"{previous}, {text}"

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
            task = asyncio.ensure_future(decision)
            task.add_done_callback(lambda done: self._write_later(done, method == "HEAD"))
            return
        transport.write(self._cache.get(decision, head=method == "HEAD"))

    def _write_later(self, done: asyncio.Future[Decision], head: bool) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        try:
            self._transport.write(self._cache.get(done.result(), head=head))
        except Exception:
            log.exception("authz decision failed")
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def start_authz_http(core: AuthzCore, host: str, port: int) -> tuple[Any, int]:
    loop = asyncio.get_running_loop()
    cache = _Cache()
    server = await loop.create_server(
        lambda: AuthzHttpProtocol(core, cache),
        host,
        port,
        reuse_port=True,
        backlog=1024,
    )
    for sock in server.sockets:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server, server.sockets[0].getsockname()[1]
