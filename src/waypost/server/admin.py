"""The admin HTTP endpoint: /healthz, /readyz, /metrics and /status.

A deliberately small HTTP/1.1 server on asyncio streams: it answers a handful of GETs from
operators and probes, one request per connection, and never lets a malformed request escape as
anything but a 4xx. With an :class:`~waypost.server.exposure.AdminAuth` token, every page but
the probes (``/healthz``, ``/readyz``) needs it (401 otherwise); with its certificate, the port
speaks TLS and may require client certificates.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from waypost.log import get_logger
from waypost.server.exposure import AdminAuth

__all__ = ["AdminServer", "Response"]

log = get_logger("waypost.admin")

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    500: "Internal Server Error",
    502: "Bad Gateway",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"

    @classmethod
    def json(cls, status: int, data: Any) -> Response:
        return cls(status, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n")


Handler = Callable[[], Awaitable[Response] | Response]
QueryHandler = Callable[[Mapping[str, str]], Awaitable[Response]]
"""A page that reads its query string (``?a=1&b=2``, last value of a repeated name wins)."""

PROBES = frozenset({"/healthz", "/readyz"})
"""Pages load balancers and kubelets call without credentials; they reveal only up/ready."""


class AdminServer:
    def __init__(
        self,
        *,
        ready: Callable[[], bool],
        status: Callable[[], dict[str, Any]],
        problems: Callable[[], list[str]] | None = None,
        auth: AdminAuth | None = None,
    ) -> None:
        self._auth = auth or AdminAuth()
        self._ready = ready
        self._status = status
        self._problems = problems
        self._routes: dict[str, Callable[[], Response]] = {
            "/healthz": lambda: Response.json(200, {"status": "ok"}),
            "/readyz": self._readyz,
            "/metrics": lambda: Response(200, generate_latest(), CONTENT_TYPE_LATEST),
            "/status": lambda: Response.json(200, self._status()),
        }
        self._query_routes: dict[str, QueryHandler] = {}
        self._server: asyncio.Server | None = None

    def route(self, path: str, handler: Callable[[], Response]) -> None:
        self._routes[path] = handler

    def route_query(self, path: str, handler: QueryHandler) -> None:
        self._query_routes[path] = handler

    def _readyz(self) -> Response:
        ready = self._ready()
        body: dict[str, Any] = {"ready": ready}
        if self._problems is not None and not ready:
            body["problems"] = self._problems()
        return Response.json(200 if ready else 503, body)

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self._auth.ssl_context())
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            response = self._dispatch(head)
            if not isinstance(response, Response):
                response = await response
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("admin request failed")
            response = Response.json(500, {"error": "internal error"})
        reason = _REASONS.get(response.status, "Error")
        # Browsers answer a Basic challenge with a password prompt: the token goes there.
        challenge = 'www-authenticate: Basic realm="waypost admin"\r\n' if response.status == 401 else ""
        writer.write(
            f"HTTP/1.1 {response.status} {reason}\r\n{challenge}content-type: {response.content_type}\r\n"
            f"content-length: {len(response.body)}\r\nconnection: close\r\n\r\n".encode()
            + response.body
        )
        try:
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def _dispatch(self, head: bytes) -> Response | Awaitable[Response]:
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return Response.json(400, {"error": "malformed request line"})
        method, target = parts[0], parts[1]
        path, _, query = target.partition("?")
        # Before anything else answers: an unknown page's 404 lists the pages there are.
        if path not in PROBES and not self._auth.allows(_header(head, b"authorization")):
            return _UNAUTHORIZED
        handler = self._routes.get(path)
        query_handler = self._query_routes.get(path)
        if handler is None and query_handler is None:
            pages = sorted([*self._routes, *self._query_routes])
            return Response.json(404, {"error": f"no such page: {path}", "pages": pages})
        if method not in ("GET", "HEAD"):
            return Response.json(405, {"error": "only GET is served here"})
        if query_handler is not None:
            return query_handler(dict(parse_qsl(query, keep_blank_values=True)))
        assert handler is not None
        return handler()


_UNAUTHORIZED = Response.json(401, {"error": "authentication required: Authorization: Bearer <admin token>"})


def _header(head: bytes, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case) in a request head, or None."""
    for line in head.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name:
            return value.strip().decode("latin-1")
    return None
