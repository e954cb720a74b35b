"""The demo/test echo backend: what it reports, its test hooks, and HTTP/1.1 connection handling."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from support import (
    REPO_ROOT,
    EchoFactory,
    aget,
    arequest,
    async_http_client,
    async_wait_until,
    free_port,
    get,
    wait_until,
)
from waypost.demo.echo import EchoServer, start_echo


@pytest.fixture
async def echo(echo_backend: EchoFactory) -> EchoServer:
    return await echo_backend("orders")


async def _raw_exchange(server: EchoServer, payload: bytes, *, responses: int = 1) -> bytes:
    """Send raw bytes and read until the server closes or ``responses`` bodies arrived."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(payload)
        await writer.drain()
        data = b""
        while data.count(b'"backend"') < responses:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        writer.close()
        await writer.wait_closed()


async def test_reports_the_request(echo: EchoServer) -> None:
    response = await aget(f"{echo.url}/orders/42?expand=items&x=%2F", headers={"X-Custom": "Value"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-echo-backend"] == "orders"
    body = response.json()
    assert body["backend"] == "orders"
    assert body["method"] == "GET"
    assert body["path"] == "/orders/42?expand=items&x=%2F"  # raw, not decoded
    assert body["headers"]["x-custom"] == "Value"
    assert body["headers"]["host"] == f"127.0.0.1:{echo.port}"
    assert body["body"] == ""
    (recorded,) = echo.requests
    assert recorded.path == "/orders/42?expand=items&x=%2F"
    assert recorded.headers["x-custom"] == "Value"


async def test_content_length_body(echo: EchoServer) -> None:
    response = await arequest("POST", f"{echo.url}/orders", content=b'{"item": "book"}')
    body = response.json()
    assert body["method"] == "POST"
    assert body["body"] == '{"item": "book"}'
    assert body["headers"]["content-length"] == "16"


async def test_chunked_body(echo: EchoServer) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"hello ", b"chunked ", b"world"):
            yield part

    response = await arequest("PUT", f"{echo.url}/c", content=chunks())
    body = response.json()
    assert body["headers"]["transfer-encoding"] == "chunked"
    assert body["body"] == "hello chunked world"


async def test_repeated_headers_are_joined(echo: EchoServer) -> None:
    data = await _raw_exchange(
        echo, b"GET / HTTP/1.1\r\nhost: x\r\nx-tag: a\r\nX-Tag: b\r\nconnection: close\r\n\r\n"
    )
    body = json.loads(data.split(b"\r\n\r\n", 1)[1])
    assert body["headers"]["x-tag"] == "a, b"


async def test_status_hook(echo: EchoServer) -> None:
    response = await aget(f"{echo.url}/", headers={"x-echo-status": "503"})
    assert response.status_code == 503
    assert response.json()["backend"] == "orders"


async def test_status_hook_without_body_statuses(echo: EchoServer) -> None:
    response = await aget(f"{echo.url}/", headers={"x-echo-status": "204"})
    assert response.status_code == 204
    assert response.content == b""


@pytest.mark.parametrize("value", ["abc", "99", "600"])
async def test_bad_status_hook_is_a_400(echo: EchoServer, value: str) -> None:
    response = await aget(f"{echo.url}/", headers={"x-echo-status": value})
    assert response.status_code == 400
    assert "x-echo-status" in response.json()["error"]


async def test_delay_hook(echo: EchoServer) -> None:
    started = time.monotonic()
    response = await aget(f"{echo.url}/", headers={"x-echo-delay-ms": "200"})
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.19


async def test_response_header_hook(echo: EchoServer) -> None:
    response = await aget(
        f"{echo.url}/",
        headers={"x-echo-header-x-internal": "secret", "x-echo-header-cache-control": "no-store"},
    )
    assert response.headers["x-internal"] == "secret"
    assert response.headers["cache-control"] == "no-store"


async def test_head_has_no_body(echo: EchoServer) -> None:
    response = await arequest("HEAD", f"{echo.url}/h")
    assert response.status_code == 200
    assert response.content == b""
    assert int(response.headers["content-length"]) > 0


async def test_keep_alive_reuses_one_connection(echo: EchoServer) -> None:
    async with async_http_client() as client:
        for index in range(3):
            response = await client.get(f"{echo.url}/{index}")
            assert response.json()["path"] == f"/{index}"
    assert len(echo.requests) == 3
    assert echo.connections == 1


async def test_pipelined_requests_answer_in_order(echo: EchoServer) -> None:
    payload = (
        b"GET /slow HTTP/1.1\r\nhost: x\r\nx-echo-delay-ms: 100\r\n\r\n"
        b"GET /fast HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    data = await _raw_exchange(echo, payload, responses=2)
    assert data.index(b'"/slow"') < data.index(b'"/fast"')
    assert data.count(b"HTTP/1.1 200 OK") == 2


async def test_connection_close_is_honoured(echo: EchoServer) -> None:
    data = await _raw_exchange(echo, b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n", responses=5)
    assert b"connection: close" in data.lower()  # and _raw_exchange returned: the server closed


async def test_expect_100_continue(echo: EchoServer) -> None:
    reader, writer = await asyncio.open_connection(echo.host, echo.port)
    try:
        writer.write(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n")
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(b"hi")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 OK")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_malformed_request_is_a_400(echo: EchoServer) -> None:
    data = await _raw_exchange(echo, b"NOT HTTP AT ALL\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 400 Bad Request")


async def test_close_does_not_wait_for_delayed_answers(caplog: pytest.LogCaptureFixture) -> None:
    server = await start_echo("slow")
    pending = asyncio.create_task(aget(f"{server.url}/", headers={"x-echo-delay-ms": "30000"}, timeout=10))
    # Recorded on arrival, before the delay. Waited for, not slept on: a loaded machine (xdist
    # beside Envoy tests) can take longer than any fixed sleep to deliver the request.
    await async_wait_until(lambda: len(server.requests) == 1, timeout=5, interval=0.02)
    started = time.monotonic()
    await server.close()
    assert time.monotonic() - started < 2
    with pytest.raises(Exception):  # noqa: B017 - httpx raises some transport error
        await pending
    await asyncio.sleep(0.05)  # let asyncio run the handler's done-callbacks
    assert not [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]


async def test_port_in_use(echo: EchoServer) -> None:
    with pytest.raises(OSError) as excinfo:
        await start_echo("clash", port=echo.port)
    assert excinfo.value.errno == errno.EADDRINUSE


def test_module_entry_point() -> None:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "waypost.demo.echo", "--name", "catalog", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        response = wait_until(lambda: get(f"http://127.0.0.1:{port}/items?x=1"), 10)
        assert response.json()["backend"] == "catalog"
        assert response.json()["path"] == "/items?x=1"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0, output
    assert b"listening on" in output
    assert b"GET /items?x=1" in output  # the access log
