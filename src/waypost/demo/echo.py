"""A tiny HTTP/1.1 echo backend for the demo and the end-to-end tests.

Every request is answered with a JSON description of what arrived, so a caller (a test, or a
person with curl) sees exactly what the gateway forwarded: which backend got it, the method,
the raw path with query (after any rewrite), the headers (after any mutation) and the body::

    {"backend": "orders", "method": "GET", "path": "/orders/42?x=1",
     "headers": {"host": "...", "x-gateway": "waypost"}, "body": ""}

Request headers steer the answer, so tests can provoke upstream behaviour without a special
backend:

- ``x-echo-status: 503``: answer with that status (the JSON body is still sent);
- ``x-echo-delay-ms: 200``: wait that long before answering (timeouts, per-try timeouts);
- ``x-echo-header-<name>: <value>``: add the response header ``<name>: <value>``.

It speaks keep-alive, pipelining, ``content-length`` and chunked bodies and ``Expect:
100-continue``; it is not meant to be fast or complete. Run it alone with
``python -m waypost.demo.echo --name orders --port 9101``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import ssl
import sys
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self

import httptools

__all__ = ["EchoRequest", "EchoServer", "main", "start_echo"]

STATUS_HEADER = "x-echo-status"
DELAY_HEADER = "x-echo-delay-ms"
RESPONSE_HEADER_PREFIX = "x-echo-header-"
BACKEND_HEADER = "x-echo-backend"
"""Response header naming the backend, for callers that look at headers rather than the body."""

_MAX_DELAY_MS = 60_000  # a typo in a test must not hang it for hours
_READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class EchoRequest:
    """One request as the backend received it (what the JSON answer describes)."""

    method: str
    path: str
    """The raw request target: path and query, exactly as sent on the wire."""
    headers: dict[str, str]
    """Lowercased names; repeated headers are joined with ``", "``."""
    body: str
    http_version: str = "1.1"

    def to_json(self, backend: str) -> dict[str, object]:
        return {
            "backend": backend,
            "method": self.method,
            "path": self.path,
            "headers": self.headers,
            "body": self.body,
        }


@dataclass(slots=True)
class _Message:
    """A request being parsed."""

    url: bytearray = field(default_factory=bytearray)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)


class _Collector:
    """httptools callbacks: turns bytes into complete requests, queued in arrival order."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.done: deque[tuple[EchoRequest, bool]] = deque()
        self._writer = writer
        self._message = _Message()

    # The method names below are httptools' callback protocol.
    def on_message_begin(self) -> None:
        self._message = _Message()

    def on_url(self, url: bytes) -> None:
        self._message.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._message.headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text

    def on_headers_complete(self) -> None:
        # curl sends `Expect: 100-continue` before larger bodies and waits a second for this.
        if self._message.headers.get("expect", "").lower() == "100-continue":
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._message.body += body

    def on_message_complete(self) -> None:
        message = self._message
        request = EchoRequest(
            method=self.parser.get_method().decode("ascii"),
            path=message.url.decode("latin-1"),
            headers=message.headers,
            body=message.body.decode("utf-8", errors="replace"),
            http_version=self.parser.get_http_version(),
        )
        self.done.append((request, self.parser.should_keep_alive()))


class EchoServer:
    """A running echo backend. Use :func:`start_echo` to make one."""

    def __init__(
        self, name: str, host: str, *, access_log: bool = False, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.name = name
        self.host = host
        self.ssl_context = ssl_context
        """When set, the backend speaks HTTPS (TLS with this server context) instead of HTTP."""
        self.port = 0
        self.requests: list[EchoRequest] = []
        """Every request received, in arrival order (recorded before any delay or answer)."""
        self.connections = 0
        """How many TCP connections were accepted (keep-alive makes this lower than requests)."""
        self.access_log = access_log
        """Print one line per request to stderr."""
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def address(self) -> str:
        """``host:port``, as a Service endpoint in a policy would name it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def _listen(self, port: int) -> None:
        self._server = await asyncio.start_server(
            self._serve_connection, self.host, port, ssl=self.ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Stop listening and drop open connections (pending delayed answers are cancelled)."""
        if self._server is None:
            return
        self._closing = True
        self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"EchoServer(name={self.name!r}, url={self.url!r}, requests={len(self.requests)})"

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        collector = _Collector(writer)
        try:
            while True:
                data = await reader.read(_READ_SIZE)
                if not data:
                    return
                try:
                    collector.parser.feed_data(data)
                except httptools.HttpParserUpgrade:
                    await self._write_error(writer, 501, "upgrades are not supported")
                    return
                except httptools.HttpParserError as exc:
                    await self._write_error(writer, 400, f"bad request: {exc}")
                    return
                # Answer in arrival order, one at a time: that is what HTTP/1.1 pipelining needs.
                while collector.done:
                    request, keep_alive = collector.done.popleft()
                    if not await self._answer(request, writer, keep_alive):
                        return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return  # the client went away (e.g. Envoy gave up after a timeout): nothing to answer
        except asyncio.CancelledError:
            # Our own close(): end normally, because asyncio (3.11) logs a spurious error for a
            # cancelled connection handler. Any other cancellation propagates.
            if self._closing:
                return
            raise
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, request: EchoRequest, writer: asyncio.StreamWriter, keep_alive: bool) -> bool:
        """Answer one request; return whether the connection stays open for the next one."""
        self.requests.append(request)
        if self.access_log:
            print(f"[{self.name}] {request.method} {request.path}", file=sys.stderr, flush=True)

        status = 200
        requested_status = request.headers.get(STATUS_HEADER)
        if requested_status is not None:
            if not requested_status.strip().isdigit() or not 200 <= int(requested_status) <= 599:
                await self._write_error(writer, 400, f"{STATUS_HEADER} must be a status from 200 to 599")
                return False
            status = int(requested_status)

        delay = request.headers.get(DELAY_HEADER)
        if delay is not None:
            if not delay.strip().isdigit():
                await self._write_error(writer, 400, f"{DELAY_HEADER} must be whole milliseconds")
                return False
            await asyncio.sleep(min(int(delay), _MAX_DELAY_MS) / 1000)

        extra = [
            (name[len(RESPONSE_HEADER_PREFIX) :], value)
            for name, value in request.headers.items()
            if name.startswith(RESPONSE_HEADER_PREFIX) and len(name) > len(RESPONSE_HEADER_PREFIX)
        ]
        body = json.dumps(request.to_json(self.name)).encode()
        await self._write_response(
            writer, status, body, extra, keep_alive=keep_alive, head=request.method == "HEAD"
        )
        return keep_alive

    async def _write_error(self, writer: asyncio.StreamWriter, status: int, reason: str) -> None:
        body = json.dumps({"backend": self.name, "error": reason}).encode()
        await self._write_response(writer, status, body, [], keep_alive=False, head=False)

    async def _write_response(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        extra_headers: list[tuple[str, str]],
        *,
        keep_alive: bool,
        head: bool,
    ) -> None:
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {status} {phrase}", f"{BACKEND_HEADER}: {self.name}"]
        # 204 and 304 never carry a body; announcing one would break the client's framing.
        if status in (204, 304):
            body = b""
        else:
            lines += ["content-type: application/json", f"content-length: {len(body)}"]
        if not keep_alive:
            lines.append("connection: close")
        lines += [f"{name}: {value}" for name, value in extra_headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head:
            writer.write(body)
        await writer.drain()


async def start_echo(
    name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    access_log: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> EchoServer:
    """Start an echo backend answering as ``name``; ``port`` 0 picks a free port (see ``.port``).

    With ``ssl_context`` (a server-side context) it answers over HTTPS, e.g. as a TLS upstream.

    Raises ``OSError`` (``errno.EADDRINUSE``) when the port is taken.
    """
    server = EchoServer(name, host, access_log=access_log, ssl_context=ssl_context)
    await server._listen(port)
    return server


async def _run(name: str, host: str, port: int) -> None:
    server = await start_echo(name, host, port, access_log=True)
    print(f"echo backend {name!r} listening on {server.url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m waypost.demo.echo", description="HTTP echo backend for waypost demos and tests."
    )
    parser.add_argument("--name", required=True, help="backend name reported in every answer")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    args = parser.parse_args(argv)
    try:
        _event_loop_runner()(_run(args.name, args.host, args.port))
    except OSError as exc:
        print(f"echo backend {args.name!r}: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop's runner where it is installed (faster under load tests), asyncio's otherwise."""
    try:
        import uvloop
    except ImportError:  # e.g. Windows, where uvloop does not exist
        return asyncio.run
    return uvloop.run


if __name__ == "__main__":
    sys.exit(main())
