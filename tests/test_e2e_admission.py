"""End to end: admission control per Service. A failing Service has requests shed by Envoy (503
without reaching it) once its success rate falls; a healthy Service on the same gateway is not
touched."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import EchoFactory, EnvoyProcess, WaypostProcess, free_ports

pytestmark = pytest.mark.e2e


async def test_failing_service_is_shed_healthy_one_is_not(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    fragile = await echo_backend("fragile")
    healthy = await echo_backend("healthy")
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
name: fragile
endpoints: ["{fragile.address}"]
admission_control: {{success_rate: 95, window: 10s, min_rps: 1, max_rejection: 90}}
---
kind: Service
name: healthy
endpoints: ["{healthy.address}"]
---
kind: Route
name: fragile
gateway: public
match: {{prefix: /fragile}}
backend: fragile
---
kind: Route
name: healthy
gateway: public
match: {{prefix: /healthy}}
backend: healthy
"""
    )
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, port)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as client:
        failing = [
            (await client.get("/fragile/x", headers={"x-echo-status": "503"})).status_code for _ in range(150)
        ]
        assert set(failing) == {503}
        assert len(fragile.requests) < 150, "nothing was shed"
        for _ in range(50):
            assert (await client.get("/healthy/x")).status_code == 200
        assert len(healthy.requests) == 50
    rejected = envoy.stats(filter=r"admission_control\.rq_rejected$")
    assert sum(rejected.values()) == 150 - len(fragile.requests), rejected
