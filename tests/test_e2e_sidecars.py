"""Sidecars: two Envoys in front of two services, mTLS between them, one policy repository.

The `web` app calls plain HTTP on 127.0.0.1:<out>; its sidecar sends the call over mTLS to the
`orders` sidecar, found because that Envoy registered itself as an instance of `orders`; the
`orders` sidecar checks the client certificate against the mesh CA and applies its inbound
route's rate limit before the local app sees the call. A client without a mesh certificate is
turned away at the handshake.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import EchoFactory, EnvoyProcess, WaypostProcess
from support.pki import TestCA
from support.ports import free_ports
from support.procs import async_wait_until

pytestmark = pytest.mark.e2e


def _policy(inbound: int, outbound: int, app: int) -> str:
    return f"""\
kind: Sidecar
name: orders
nodes: {{labels: {{app: orders}}}}
tls: {{cert: certs/orders.pem, key: certs/orders-key.pem, ca: certs/ca.pem}}
inbound: {{port: {inbound}, app: "127.0.0.1:{app}", rate_limit: orders-inbound}}
grace: 1s
---
kind: Sidecar
name: web
nodes: {{labels: {{app: web}}}}
tls: {{cert: certs/web.pem, key: certs/web-key.pem, ca: certs/ca.pem}}
outbound: [{{service: orders, port: {outbound}}}]
---
kind: RateLimitPolicy
name: orders-inbound
limits: [{{by: route, requests: 3, per: minute, scope: local}}]
"""


async def test_sidecars_call_each_other_over_mtls_with_inbound_features(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    app = await echo_backend("orders-app")
    inbound, outbound = free_ports(2)
    policies = tmp_path / "policies"
    ca = TestCA.create(policies / "certs", name="mesh-ca")
    ca.issue("orders", dns=["orders"], both=True)
    ca.issue("web", dns=["web"], both=True)
    (policies / "certs" / "ca.pem").write_bytes(ca.cert_path.read_bytes())
    outsider = TestCA.create(tmp_path / "other-ca").issue("web", dns=["web"], client=True)
    (policies / "mesh.yaml").write_text(_policy(inbound, outbound, app.port))
    waypost = await asyncio.to_thread(start_waypost, policies)

    orders = await asyncio.to_thread(
        start_envoy,
        xds_port=waypost.xds_port,
        node_id="orders-1",
        node_cluster="mesh",
        labels={"app": "orders"},
        bootstrap_options={"register": ("orders", f"127.0.0.1:{inbound}")},
    )
    web = await asyncio.to_thread(
        start_envoy, xds_port=waypost.xds_port, node_id="web-1", node_cluster="mesh", labels={"app": "web"}
    )
    await asyncio.to_thread(orders.wait_for_listener, inbound)
    await asyncio.to_thread(web.wait_for_listener, outbound)

    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:

        async def through_web() -> int:
            return (await client.get(f"http://127.0.0.1:{outbound}/orders/1")).status_code

        # The first calls may find no instance yet (registration, then EDS); then they land.
        await async_wait_until(lambda: _is(through_web(), 200), 20, 0.2, message="web reaches orders")
        reached = len(app.requests)
        assert reached >= 1 and app.requests[-1].path == "/orders/1"
        statuses = [await through_web() for _ in range(4)]
    # The inbound route's local limit (3 a minute) holds for calls through the mesh.
    assert statuses.count(429) >= 1, statuses
    assert len(app.requests) <= 3

    # mTLS: no client certificate, or one from another CA, is refused at the handshake.
    for cert in (None, (str(outsider.cert_path), str(outsider.key_path))):
        context = ssl.create_default_context(cafile=str(ca.cert_path))
        context.check_hostname = False
        if cert is not None:
            context.load_cert_chain(*cert)
        async with httpx.AsyncClient(trust_env=False, timeout=5, verify=context) as client:
            # TLS 1.3 reports the refusal on the first read, as the alert the server sent.
            with pytest.raises(
                (httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)
            ):
                await client.get(f"https://127.0.0.1:{inbound}/orders/1")
    assert len(app.requests) <= 3


async def _is(status: object, expected: int) -> bool:
    assert asyncio.iscoroutine(status)
    return await status == expected
