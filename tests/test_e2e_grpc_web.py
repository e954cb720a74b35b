"""End to end: a browser-style gRPC-Web call (``application/grpc-web+proto``, over HTTP/1.1)
through Envoy to a real gRPC backend on a ``grpc_web: true`` route."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import EnvoyProcess, WaypostProcess, free_ports
from test_e2e_upstream_features import HelloReply, HelloRequest, _Greeter, _grpc_server

pytestmark = pytest.mark.e2e


def _frame(payload: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(payload)) + payload


def _frames(body: bytes) -> list[tuple[int, bytes]]:
    frames = []
    while body:
        flags, length = struct.unpack(">BI", body[:5])
        frames.append((flags, body[5 : 5 + length]))
        body = body[5 + length :]
    return frames


async def test_grpc_web_call_reaches_the_grpc_backend(
    tmp_path: Path,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    server, backend_port = await _grpc_server(_Greeter())
    (port,) = free_ports(1)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(
        f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
---
kind: Service
name: greeter
endpoints: ["127.0.0.1:{backend_port}"]
protocol: grpc
---
kind: Route
name: greeter
gateway: public
match: {{prefix: /helloworld.Greeter/}}
backend: greeter
grpc_web: true
cors:
  origins: ["https://app.example.com"]
  methods: [POST]
  headers: [content-type, x-grpc-web, x-user-agent]
"""
    )
    try:
        waypost = await asyncio.to_thread(start_waypost, policies)
        envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
        await asyncio.to_thread(envoy.wait_for_listener, port)
        request = HelloRequest(name="web")  # type: ignore[operator]
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            response = await client.post(
                f"http://127.0.0.1:{port}/helloworld.Greeter/SayHello",
                content=_frame(request.SerializeToString()),
                headers={
                    "content-type": "application/grpc-web+proto",
                    "x-grpc-web": "1",
                    "origin": "https://app.example.com",
                },
            )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/grpc-web")
        assert response.headers["access-control-allow-origin"] == "https://app.example.com"
        frames = _frames(response.content)
        assert HelloReply.FromString(frames[0][1]).message == "hello web"  # type: ignore[attr-defined]
        trailers = frames[-1]
        assert trailers[0] & 0x80 and b"grpc-status:0" in trailers[1].replace(b" ", b"")
    finally:
        await server.stop(0)
