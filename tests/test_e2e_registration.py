"""Endpoints that register themselves, across two waypost replicas sharing a real Redis.

An Envoy fronting an app announces ``register: {service: orders, address: ...}`` and connects to
replica A; an edge Envoy connected to replica B routes to `orders` and reaches that app. A node
the policy does not allow never becomes an endpoint. When A is killed, its node's claim lapses
after the grace period; the node registering again through B brings the endpoint back.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import EchoFactory, EnvoyProcess, WaypostProcess
from support.ports import free_port
from support.procs import async_wait_until
from support.redis import RedisProcess

pytestmark = pytest.mark.e2e


def _policy(edge_port: int) -> str:
    return f"""\
kind: Gateway
name: public
port: {edge_port}
nodes: {{cluster: edge}}
---
kind: Route
name: orders
gateway: public
match: {{prefix: /}}
backend: orders
---
kind: Service
name: orders
registration:
  nodes: {{cluster: orders}}   # only nodes of cluster `orders` may add themselves
  grace: 1s
"""


async def _backends(base: str, count: int = 10) -> list[str]:
    """Which backend answered each of ``count`` requests ("503" when none could)."""
    seen = []
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        for _ in range(count):
            response = await client.get(f"{base}/orders/1")
            seen.append(
                response.json()["backend"] if response.status_code == 200 else str(response.status_code)
            )
    return seen


async def test_registered_endpoints_cross_replicas_and_lapse_with_their_replica(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_redis: Callable[[], RedisProcess],
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    redis = await asyncio.to_thread(start_redis)
    app, intruder_app = await echo_backend("orders-app"), await echo_backend("intruder")
    edge_port = free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(_policy(edge_port))
    replica_a = await asyncio.to_thread(start_waypost, policies, args=["--redis", redis.url])
    replica_b = await asyncio.to_thread(start_waypost, policies, args=["--redis", redis.url])

    def sidecar(node_id: str, cluster: str, replica: WaypostProcess, port: int) -> EnvoyProcess:
        return start_envoy(
            xds_port=replica.xds_port,
            node_id=node_id,
            node_cluster=cluster,
            bootstrap_options={"register": ("orders", f"127.0.0.1:{port}")},
        )

    await asyncio.to_thread(sidecar, "orders-1", "orders", replica_a, app.port)
    # Claims to front `orders` too, but from a cluster the policy does not allow.
    await asyncio.to_thread(sidecar, "intruder-1", "other", replica_b, intruder_app.port)
    edge = await asyncio.to_thread(start_envoy, xds_port=replica_b.xds_port, node_cluster="edge")
    await asyncio.to_thread(edge.wait_for_listener, edge_port)
    base = f"http://127.0.0.1:{edge_port}"

    async def only_app() -> bool:
        return set(await _backends(base)) == {"orders-app"}

    # Registered through A, served by B's Envoy: the claim crossed replicas through Redis.
    await async_wait_until(only_app, 20, 0.2, message="the app registered on A reaches B's Envoy")
    assert intruder_app.requests == []
    assert "endpoint registration not allowed by policy" in replica_b.log_text()
    registered = {(r["node"], r["allowed"]) for r in replica_b.status()["registered"]}
    assert registered == {("orders-1", True), ("intruder-1", False)}

    # A dies with the node's stream: after the grace period the endpoint is gone everywhere.
    assert replica_a.pid is not None
    os.kill(replica_a.pid, signal.SIGKILL)
    await asyncio.to_thread(replica_a.stop)

    async def gone() -> bool:
        return set(await _backends(base, 3)) == {"503"}

    await async_wait_until(gone, 20, 0.2, message="the dead replica's claim lapses")

    # The node registers again through B, and traffic comes back.
    await asyncio.to_thread(sidecar, "orders-1", "orders", replica_b, app.port)
    await async_wait_until(only_app, 20, 0.2, message="the endpoint registered again through B")
    assert intruder_app.requests == []
