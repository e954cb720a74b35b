"""End to end rate limiting: policy -> waypost (xDS + RLS) -> real Envoy -> echo, real Redis.

One stack per test, several assertions each, to keep the suite lean.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import (
    EchoFactory,
    EchoServer,
    EnvoyProcess,
    WaypostProcess,
    async_wait_until,
    free_port,
)
from support.redis import RedisProcess

pytestmark = pytest.mark.e2e


def policy_text(port: int, echo: EchoServer) -> str:
    return f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
---
kind: Service
name: echo
endpoints: ["{echo.address}"]
---
kind: Route
name: tenants
gateway: public
match: {{prefix: /tenants}}
backend: echo
rate_limit: per-tenant
---
kind: Route
name: local
gateway: public
match: {{prefix: /local}}
backend: echo
rate_limit: per-ip
---
kind: Route
name: shadow
gateway: public
match: {{prefix: /shadow}}
backend: echo
rate_limit: watch-only
---
kind: Route
name: bare
gateway: public
match: {{prefix: /bare}}
backend: echo
---
kind: RateLimitPolicy
name: per-tenant
limits:
  - {{by: header:x-tenant, requests: 10, per: hour}}
---
kind: RateLimitPolicy
name: per-ip
limits:
  - {{by: client_ip, requests: 3, per: minute, scope: local}}
---
kind: RateLimitPolicy
name: watch-only
limits:
  - {{by: header:x-tenant, requests: 2, per: hour}}
shadow: true
"""


async def get(
    port: int, path: str, headers: dict[str, str] | None = None, *, source: str = "127.0.0.1"
) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}", headers=headers)


async def warm_up(port: int) -> None:
    """Wait until Envoy's connection to the RLS is up and answering (a tenant of its own).

    The first call also opens Envoy's HTTP/2 connection to waypost; on a loaded machine that can
    take longer than the filter's timeout, and a request Envoy let through uncounted would shift
    every count after it.
    """

    async def answered() -> bool:
        response = await get(port, "/tenants", {"x-tenant": "warm-up"})
        return "ratelimit-limit" in response.headers

    await async_wait_until(answered, timeout=15, interval=0.2)


def decisions(waypost: WaypostProcess) -> float:
    return sum(
        waypost.metric("waypost_ratelimit_decisions_total", result=result) or 0.0
        for result in ("ok", "over_limit", "shadow_over_limit", "store_error")
    )


def start_stack(
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
    policies: Path,
    *,
    extra_args: tuple[str, ...] = (),
    node_id: str = "test-node",
) -> tuple[WaypostProcess, EnvoyProcess]:
    waypost = start_waypost(policies, args=list(extra_args))
    envoy = start_envoy(xds_port=waypost.xds_port, node_id=node_id)
    return waypost, envoy


async def test_global_local_shadow_and_reload(
    echo_backend: EchoFactory,
    tmp_policies: Callable[..., Path],
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    echo = await echo_backend("echo")
    port, proxied_port = free_port(), free_port()
    # A second gateway behind one trusted proxy: the client is the x-forwarded-for entry it added.
    proxied = f"""
        kind: Gateway
        name: proxied
        port: {proxied_port}
        address: 127.0.0.1
        trusted_hops: 1
        ---
        kind: Route
        name: proxied-local
        gateway: proxied
        match: {{prefix: /local}}
        backend: echo
        rate_limit: per-ip
    """
    policies = tmp_policies(None, files={"all.yaml": policy_text(port, echo), "proxied.yaml": proxied})
    waypost, envoy = await asyncio.to_thread(start_stack, start_waypost, start_envoy, policies)
    await asyncio.to_thread(envoy.wait_for_listener, port)
    await asyncio.to_thread(envoy.wait_for_listener, proxied_port)
    await warm_up(port)

    # Global, 10/hour per tenant: ten pass with counting-down headers, the 11th is a 429. Windows
    # are aligned to the unit: an hour (not a minute) keeps a slow run inside one window.
    for n in range(1, 11):
        response = await get(port, "/tenants", {"x-tenant": "acme"})
        assert response.status_code == 200, response.text
        # Missing headers: the RLS call failed or timed out and Envoy let the request through.
        assert "ratelimit-limit" in response.headers, envoy.stats("ratelimit")
        assert response.headers["ratelimit-limit"] == "10"
        assert response.headers["ratelimit-remaining"] == str(10 - n)
        assert 1 <= int(response.headers["ratelimit-reset"]) <= 3600
    denied = await get(port, "/tenants", {"x-tenant": "acme"})
    assert denied.status_code == 429
    assert denied.headers["ratelimit-limit"] == "10"
    assert denied.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(denied.headers["retry-after"]) <= 3600
    assert denied.headers["retry-after"] == denied.headers["ratelimit-reset"]
    # Another tenant is unaffected; a bare route carries no rate-limit headers.
    other = await get(port, "/tenants", {"x-tenant": "globex"})
    assert other.status_code == 200
    assert other.headers["ratelimit-remaining"] == "9"
    bare = await get(port, "/bare")
    assert bare.status_code == 200 and "ratelimit-limit" not in bare.headers

    # Local per-IP limit (3/minute): enforced inside Envoy, no call reaches waypost's RLS.
    before = await asyncio.to_thread(decisions, waypost)
    for _ in range(3):
        assert (await get(port, "/local")).status_code == 200
    local_denied = await get(port, "/local")
    assert local_denied.status_code == 429
    assert local_denied.headers["ratelimit-limit"] == "3"
    assert local_denied.headers["retry-after"] == "60"
    # Another client address has its own bucket.
    assert (await get(port, "/local", source="127.0.0.2")).status_code == 200
    # Behind a trusted proxy, each forwarded client address has its own bucket.
    for _ in range(3):
        assert (await get(proxied_port, "/local", {"x-forwarded-for": "10.0.0.1"})).status_code == 200
    assert (await get(proxied_port, "/local", {"x-forwarded-for": "10.0.0.1"})).status_code == 429
    assert (await get(proxied_port, "/local", {"x-forwarded-for": "10.0.0.2"})).status_code == 200
    assert await asyncio.to_thread(decisions, waypost) == before

    # Shadow: never blocks, reports the would-be denials.
    for _ in range(5):
        assert (await get(port, "/shadow", {"x-tenant": "acme"})).status_code == 200
    shadowed = await asyncio.to_thread(
        waypost.metric, "waypost_ratelimit_shadow_denials_total", policy="watch-only"
    )
    assert shadowed == 3

    # Hot reload: raising the limit applies within 2 s and keeps the tenant's count (12th of 20).
    (policies / "all.yaml").write_text(
        policy_text(port, echo).replace("requests: 10, per: hour", "requests: 20, per: hour")
    )

    async def raised() -> bool:
        response = await get(port, "/tenants", {"x-tenant": "globex"})
        return response.headers.get("ratelimit-limit") == "20"

    # The design target is 2 s (0.25 s debounce + reload); the wait is looser so a loaded CI
    # machine does not fail it: timing belongs in bench/, not in tests.
    await async_wait_until(raised, timeout=10.0, interval=0.1)
    response = await get(port, "/tenants", {"x-tenant": "acme"})
    assert response.status_code == 200
    assert response.headers["ratelimit-limit"] == "20"
    assert int(response.headers["ratelimit-remaining"]) == 20 - 12


async def test_redis_shared_across_replicas_and_outage(
    echo_backend: EchoFactory,
    tmp_policies: Callable[..., Path],
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
    start_redis: Callable[[], RedisProcess],
) -> None:
    echo = await echo_backend("echo")
    redis = await asyncio.to_thread(start_redis)
    port_a, port_b = free_port(), free_port()
    # Two gateways, one per Envoy node, both routes under the same global limit.
    policies = tmp_policies(
        None,
        files={
            "a.yaml": policy_text(port_a, echo).replace(
                "address: 127.0.0.1", "address: 127.0.0.1\nnodes: {cluster: a}"
            ),
            "b.yaml": f"""
                kind: Gateway
                name: second
                port: {port_b}
                address: 127.0.0.1
                nodes: {{cluster: b}}
                ---
                kind: Route
                name: tenants-b
                gateway: second
                match: {{prefix: /tenants}}
                backend: echo
                rate_limit: per-tenant
            """,
        },
    )

    def start_two() -> tuple[WaypostProcess, WaypostProcess, EnvoyProcess, EnvoyProcess]:
        redis_args = ["--redis", redis.url]
        waypost_a = start_waypost(policies, args=redis_args)
        waypost_b = start_waypost(policies, args=redis_args)
        envoy_a = start_envoy(xds_port=waypost_a.xds_port, node_id="a", node_cluster="a")
        envoy_b = start_envoy(xds_port=waypost_b.xds_port, node_id="b", node_cluster="b")
        envoy_a.wait_for_listener(port_a)
        envoy_b.wait_for_listener(port_b)
        return waypost_a, waypost_b, envoy_a, envoy_b

    waypost_a, waypost_b, _, _ = await asyncio.to_thread(start_two)
    await warm_up(port_a)
    await warm_up(port_b)
    tenant = {"x-tenant": "acme"}

    # One limit of 10/hour holds across both Envoys and both waypost replicas.
    for n in range(10):
        response = await get(port_a if n % 2 else port_b, "/tenants", tenant)
        assert response.status_code == 200, response.text
    assert (await get(port_a, "/tenants", tenant)).status_code == 429
    assert (await get(port_b, "/tenants", tenant)).status_code == 429

    # Redis dies: fail open (the over-limit tenant passes again), the outage shows in /metrics.
    await asyncio.to_thread(redis.stop)
    for _ in range(3):
        assert (await get(port_a, "/tenants", tenant)).status_code == 200
    assert await asyncio.to_thread(waypost_a.metric, "waypost_ratelimit_store_up") == 0
    assert await asyncio.to_thread(waypost_a.metric, "waypost_ratelimit_store_outages_total") == 1
    assert (await asyncio.to_thread(waypost_a.metric, "waypost_ratelimit_store_errors_total") or 0) >= 3
    assert "rate-limit store unreachable" in waypost_a.log_text()

    # Redis is back (empty): limiting resumes by itself, shared again.
    await asyncio.to_thread(redis.restart)

    async def counting() -> bool:
        return "ratelimit-remaining" in (await get(port_b, "/tenants", tenant)).headers

    await async_wait_until(counting, timeout=10, interval=0.2)
    statuses = [(await get(port_a if n % 2 else port_b, "/tenants", tenant)).status_code for n in range(12)]
    assert statuses.count(429) >= 2 and statuses[-1] == 429, statuses
    assert await asyncio.to_thread(waypost_a.metric, "waypost_ratelimit_store_up") == 1
    assert await asyncio.to_thread(waypost_b.metric, "waypost_ratelimit_store_outages_total") == 0
    assert waypost_a.log_text().count("rate-limit store unreachable") == 1
