"""End to end rate limiting: policy -> waypost (xDS + RLS) -> real Envoy -> echo, real Redis.

One stack per test, several assertions each, to keep the suite lean.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
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
from support.redis import RedisProcess, find_redis_server

pytestmark = pytest.mark.e2e


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[Callable[[], RedisProcess]]:
    """A real redis-server on a free loopback port (never a fake)."""
    binary = find_redis_server()
    if binary is None:
        pytest.fail("redis-server is not installed: run `make system-deps`", pytrace=False)
    started: list[RedisProcess] = []

    def start() -> RedisProcess:
        process = RedisProcess(workdir=tmp_path, binary=binary)
        started.append(process)
        return process.start()

    yield start
    for process in started:
        process.stop()


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
  - {{by: header:x-tenant, requests: 10, per: minute}}
---
kind: RateLimitPolicy
name: per-ip
limits:
  - {{by: client_ip, requests: 3, per: minute, scope: local}}
---
kind: RateLimitPolicy
name: watch-only
limits:
  - {{by: header:x-tenant, requests: 2, per: minute}}
shadow: true
"""


async def get(
    port: int, path: str, headers: dict[str, str] | None = None, *, source: str = "127.0.0.1"
) -> httpx.Response:
    transport = httpx.AsyncHTTPTransport(local_address=source)
    async with httpx.AsyncClient(transport=transport, trust_env=False, timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}", headers=headers)


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
    rls_port = free_port()
    waypost = start_waypost(policies, args=["--ratelimit-port", str(rls_port), *extra_args])
    envoy = start_envoy(xds_port=waypost.xds_port, ratelimit_port=rls_port, node_id=node_id)
    return waypost, envoy


async def test_global_local_shadow_and_reload(
    echo_backend: EchoFactory,
    tmp_policies: Callable[..., Path],
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    echo = await echo_backend("echo")
    port = free_port()
    policies = tmp_policies(None, files={"all.yaml": policy_text(port, echo)})
    waypost, envoy = await asyncio.to_thread(start_stack, start_waypost, start_envoy, policies)
    await asyncio.to_thread(envoy.wait_for_listener, port)

    # Global, 10/minute per tenant: ten pass with counting-down headers, the 11th is a 429.
    for n in range(1, 11):
        response = await get(port, "/tenants", {"x-tenant": "acme"})
        assert response.status_code == 200, response.text
        assert response.headers["ratelimit-limit"] == "10"
        assert response.headers["ratelimit-remaining"] == str(10 - n)
        assert 1 <= int(response.headers["ratelimit-reset"]) <= 60
    denied = await get(port, "/tenants", {"x-tenant": "acme"})
    assert denied.status_code == 429
    assert denied.headers["ratelimit-limit"] == "10"
    assert denied.headers["ratelimit-remaining"] == "0"
    assert 1 <= int(denied.headers["retry-after"]) <= 60
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
        policy_text(port, echo).replace("requests: 10, per: minute", "requests: 20, per: minute")
    )

    async def raised() -> bool:
        response = await get(port, "/tenants", {"x-tenant": "globex"})
        return response.headers.get("ratelimit-limit") == "20"

    await async_wait_until(raised, timeout=2.0, interval=0.1)
    response = await get(port, "/tenants", {"x-tenant": "acme"})
    assert response.status_code == 200
    assert response.headers["ratelimit-limit"] == "20"
    assert int(response.headers["ratelimit-remaining"]) == 20 - 12
