"""Call analytics test helpers: a policy of three API-key consumers over two routes, the stack
(waypost with its collector and ext_authz, one Envoy), a fixed traffic mix, and figure readers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

from support.client import get
from support.echo import EchoFactory
from support.ports import free_port
from support.procs import EnvoyProcess, WaypostProcess, async_wait_until
from waypost.filters.authz.core import hash_api_key

__all__ = [
    "DELAY_MS",
    "KEYS",
    "figures",
    "policy_text",
    "send_traffic",
    "start_stack",
    "wait_in_sync",
    "wait_total",
]

KEYS = {"acme": "acme-key-1", "globex": "globex-key-1", "initech": "initech-key-1"}
DELAY_MS = 40


def policy_text(port: int, backend: str, *, auth: bool = True) -> str:
    auth_line = "auth: keys" if auth else ""
    return f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
---
kind: Service
name: echo
endpoints: ["{backend}"]
---
kind: Route
name: orders
gateway: public
match: {{prefix: /orders}}
backend: echo
{auth_line}
---
kind: Route
name: billing
gateway: public
match: {{prefix: /billing}}
backend: echo
{auth_line}
---
kind: Api
name: shop
title: Shop
version: v1
routes: [orders]
---
kind: AuthPolicy
name: keys
identity:
  - api_key: {{header: x-api-key}}
---
kind: Consumer
name: acme
api_keys: ["{hash_api_key(KEYS["acme"])}"]
---
kind: Consumer
name: globex
api_keys: ["{hash_api_key(KEYS["globex"])}"]
---
kind: Consumer
name: initech
plan: gold
api_keys: ["{hash_api_key(KEYS["initech"])}"]
"""


def figures(waypost: WaypostProcess, **params: str) -> dict[str, Any]:
    query = urlencode({"range": "5m", **params})
    response = get(f"{waypost.admin_url}/analytics.json?{query}", timeout=10)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def wait_total(waypost: WaypostProcess, expected: float, timeout: float = 20) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        data = await asyncio.to_thread(figures, waypost)
        return data if data["totals"]["requests"] >= expected else None

    return await async_wait_until(
        reached, timeout=timeout, interval=0.5, message=f"{expected} requests counted"
    )


async def start_stack(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
    *,
    auth: bool = True,
    extra: tuple[str, ...] = (),
    name: str = "a",
) -> tuple[WaypostProcess, EnvoyProcess, int]:
    """waypost (collector, ext_authz) and one Envoy; ``name`` keeps several stacks apart."""
    echo = await echo_backend("echo")
    port = free_port()
    policies = tmp_path / f"policies-{name}"
    policies.mkdir(exist_ok=True)
    (policies / "policy.yaml").write_text(policy_text(port, echo.address, auth=auth))
    # Port 0: the collector binds any free port and the cluster compiled into CDS names it (a
    # restart may move it; Envoy follows). ext_authz runs in serve too (on any free port), and
    # reaches Envoy over CDS like the collector.
    args = ["--analytics-port", "0", "--data-dir", str(tmp_path / f"data-{name}"), *extra]
    waypost = await asyncio.to_thread(start_waypost, policies, args=args)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port, node_id=f"node-{name}")
    await asyncio.to_thread(envoy.wait_for_listener, port)
    return waypost, envoy, port


async def send_traffic(port: int) -> tuple[int, float]:
    """The fixed mix every count below is checked against; returns (requests, slowest globex ms)."""
    sent = 0
    slowest = 0.0
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:

        async def call(consumer: str | None, path: str, **headers: str) -> int:
            nonlocal sent
            if consumer is not None:
                headers["x-api-key"] = KEYS[consumer]
            sent += 1
            return (await client.get(f"http://127.0.0.1:{port}{path}", headers=headers)).status_code

        # Warm up ext_authz until it answers (its first calls open connections), then reset.
        await async_wait_until(lambda: call("acme", "/orders/warm"), timeout=15, interval=0.2)
        assert sent >= 1
        warm = sent
        for _ in range(5):
            assert await call("acme", "/orders/1") == 200
        for _ in range(3):
            assert await call("acme", "/billing/1", **{"x-echo-status": "503"}) == 503
        for _ in range(4):
            started = time.perf_counter()
            assert await call("globex", "/orders/2", **{"x-echo-delay-ms": str(DELAY_MS)}) == 200
            slowest = max(slowest, (time.perf_counter() - started) * 1000)
        for _ in range(2):
            assert await call("initech", "/billing/2") == 200
        assert await call("initech", "/billing/3", **{"x-echo-status": "429"}) == 429
        for _ in range(2):
            assert await call(None, "/orders/3") == 401
    return sent - warm, slowest


async def wait_in_sync(waypost: WaypostProcess) -> None:
    """Until every connected Envoy holds the current config: after a restart with the collector on
    another port (port 0), entries reach it only once Envoy has the new cluster."""

    def in_sync() -> bool:
        nodes = waypost.status()["nodes"]
        return bool(nodes) and all(t["in_sync"] for n in nodes for t in n["types"].values())

    await async_wait_until(in_sync, timeout=20, interval=0.2, message="Envoy in sync")
