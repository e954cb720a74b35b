"""End to end: a Service with ``protocol: grpc`` and ``health_check`` is checked by Envoy with
``grpc.health.v1.Health/Check`` (not an HTTP GET). The upstream is a real gRPC server: grpcio's
reference health servicer, and waypost's own lean server (whose health reflects readiness).
Envoy's admin ``/clusters`` shows the endpoint healthy while it answers SERVING, and
``failed_active_hc`` once it answers NOT_SERVING, and healthy again when it is back. (With its
only endpoint unhealthy, Envoy's panic threshold still routes to it: that is Envoy's choice.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support import EnvoyProcess, WaypostProcess, async_wait_until, free_port
from waypost.h2grpc import Service, UnaryMethod, start_grpc_server

pytestmark = pytest.mark.e2e

SERVICE = "greeter.v1.Greeter"


async def grpcio_upstream() -> tuple[int, Callable[[bool], Awaitable[None]], Callable[[], Awaitable[None]]]:
    server = grpc.aio.server()
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    hello = grpc.unary_unary_rpc_method_handler(lambda request, context: b"hello")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {"Hello": hello}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()

    async def set_serving(serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await health.set(SERVICE, status)

    async def stop() -> None:
        await server.stop(None)

    return port, set_serving, stop


async def lean_upstream() -> tuple[int, Callable[[bool], Awaitable[None]], Callable[[], Awaitable[None]]]:
    ready = {"value": False}
    service = Service(SERVICE, {"Hello": UnaryMethod(lambda body: b"hello")}, ready=lambda: ready["value"])
    server = await start_grpc_server([service], "127.0.0.1", 0)

    async def set_serving(serving: bool) -> None:
        ready["value"] = serving
        server.health.notify()

    return server.port, set_serving, server.stop


@pytest.mark.parametrize("upstream", [grpcio_upstream, lean_upstream], ids=["grpcio", "waypost-h2grpc"])
async def test_grpc_upstream_is_health_checked_over_grpc(
    tmp_path: Path,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
    upstream: Callable[
        [], Awaitable[tuple[int, Callable[[bool], Awaitable[None]], Callable[[], Awaitable[None]]]]
    ],
) -> None:
    backend_port, set_serving, stop = await upstream()
    await set_serving(True)
    port = free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
---
kind: Service
name: greeter
endpoints: ["127.0.0.1:{backend_port}"]
protocol: grpc
health_check: {{service: {SERVICE}, interval: 300ms, timeout: 1s, healthy: 1, unhealthy: 1}}
---
kind: Route
name: greeter
gateway: public
match: {{prefix: /{SERVICE}/}}
backend: greeter
""")
    try:
        waypost = await asyncio.to_thread(start_waypost, policies)
        envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
        await asyncio.to_thread(envoy.wait_for_listener, port)

        seen: list[str] = []

        async def flags() -> str:
            """The endpoint's ``health_flags`` line of Envoy's /clusters."""
            text = (await asyncio.to_thread(envoy.admin_get, "/clusters")).text
            seen[:] = [line for line in text.splitlines() if line.startswith("greeter::")]
            return next(line for line in seen if "health_flags" in line)

        async def healthy() -> bool:
            return (await flags()).endswith("::health_flags::healthy")

        await async_wait_until(healthy, timeout=15, message=lambda: repr(seen))
        assert (
            envoy.stats("cluster.greeter.health_check.success").get("cluster.greeter.health_check.success")
            or 0
        ) >= 1
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert await channel.unary_unary(f"/{SERVICE}/Hello")(b"", timeout=5) == b"hello"
            await set_serving(False)

            async def failed() -> bool:
                return "failed_active_hc" in await flags()

            await async_wait_until(failed, timeout=15, message=lambda: repr(seen))
            failures = envoy.stats("cluster.greeter.health_check.failure")
            assert failures.get("cluster.greeter.health_check.failure", 0) >= 1
            await set_serving(True)
            await async_wait_until(healthy, timeout=15, message=lambda: repr(seen))
    finally:
        await stop()
