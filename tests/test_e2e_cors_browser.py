"""A real browser preflight: headless Chromium, on a page of another origin, calls the policy
spec's CORS example route with ``fetch`` and a custom header. The route's match has methods and a
header condition the preflight carries neither of; it must answer the preflight anyway, and the
actual request must then reach the backend."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from support import EchoFactory, EnvoyProcess, WaypostProcess, free_ports
from support.browser import headless

pytestmark = pytest.mark.e2e

PAGE = """<!doctype html><html><body><p id="out">pending</p><script>
fetch("http://127.0.0.1:{port}/v1/orders/7", {{
  method: "POST",
  headers: {{"x-canary": "true", "authorization": "Bearer t", "content-type": "application/json"}},
  body: JSON.stringify({{qty: 1}}),
}}).then(async r => {{
  document.getElementById("out").textContent = "status=" + r.status + " body=" + (await r.text()).length;
}}).catch(e => {{ document.getElementById("out").textContent = "error=" + e; }});
</script></body></html>"""


async def _serve_page(html: str) -> tuple[asyncio.Server, int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        data = html.encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\nconnection: close\r\n"
            + f"content-length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_chromium_preflight_on_the_spec_cors_route(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend = await echo_backend("orders")
    (port,) = free_ports(1)
    page_server, page_port = await _serve_page(PAGE.format(port=port))
    origin = f"http://127.0.0.1:{page_port}"
    policies = tmp_path / "policies"
    policies.mkdir()
    # The spec's Route example (docs: policy-spec, "Route"), with this page's origin allowed.
    (policies / "policy.yaml").write_text(
        f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
---
kind: Service
name: orders
endpoints: ["{backend.address}"]
---
kind: Route
name: orders-v1
gateway: public
match:
  prefix: /v1/orders
  methods: [GET, POST]
  headers: {{x-canary: "true"}}
backend: orders
timeout: 5s
response_headers: {{add: {{x-frame-options: DENY}}, remove: [server]}}
cors:
  origins: ["{origin}"]
  methods: [GET, POST]
  headers: [authorization, x-canary, content-type]
  max_age: 1h
  credentials: true
"""
    )
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, port)
    try:
        result = await asyncio.to_thread(headless, f"{origin}/", tmp_path / "chromium-profile", "--dump-dom")
        found = re.search(r'<p id="out">([^<]*)</p>', result.stdout)
        assert found is not None, result.stdout[-2000:] + result.stderr[-2000:]
        assert found.group(1).startswith("status=200"), found.group(1)
        methods = [r.method for r in backend.requests]
        assert methods == ["POST"], methods  # the preflight was answered by Envoy, not the backend
        assert backend.requests[0].headers["origin"] == origin
    finally:
        page_server.close()
        await page_server.wait_closed()
