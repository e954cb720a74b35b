"""End to end: policy files -> waypost -> real Envoy over ADS -> real HTTP to echo backends."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support import EchoFactory, EchoServer, EnvoyProcess, WaypostProcess, async_wait_until, free_port

pytestmark = pytest.mark.e2e


def policy_text(port: int, alpha: EchoServer, beta: EchoServer) -> str:
    return f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
nodes: {{cluster: edge}}
---
kind: Service
name: alpha
endpoints: ["{alpha.address}"]
---
kind: Service
name: beta
endpoints: ["{beta.address}"]
---
kind: Route
name: orders
gateway: public
match: {{prefix: /v1/orders, methods: [GET, POST]}}
backend: alpha
rewrite: {{prefix: /orders}}
request_headers: {{add: {{x-gateway: waypost}}, remove: [x-debug]}}
response_headers: {{add: {{x-frame-options: DENY}}, remove: [x-internal]}}
---
kind: Route
name: orders-summary
gateway: public
match: {{path: /v1/orders/summary}}
backend: beta
---
kind: Route
name: items
gateway: public
match: {{regex: "/items/[0-9]+"}}
backend: beta
---
kind: Route
name: canary
gateway: public
match: {{prefix: /v1/orders, headers: {{x-canary: "true"}}}}
backend: beta
---
kind: Route
name: split
gateway: public
match: {{prefix: /split}}
backends: [{{service: alpha, weight: 75}}, {{service: beta, weight: 25}}]
---
kind: Route
name: other-host
gateway: public
hosts: [api.example.com]
match: {{prefix: /only-api}}
backend: beta
"""


@dataclass
class Stack:
    policies: Path
    port: int
    alpha: EchoServer
    beta: EchoServer
    waypost: WaypostProcess
    envoy: EnvoyProcess

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write(self, name: str, text: str) -> None:
        (self.policies / name).write_text(text)


@pytest.fixture
async def stack(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> Stack:
    alpha, beta = await echo_backend("alpha"), await echo_backend("beta")
    port = free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(policy_text(port, alpha, beta))
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port, node_cluster="edge")
    await asyncio.to_thread(envoy.wait_for_listener, port)
    return Stack(policies, port, alpha, beta, waypost, envoy)


async def get_json(client: httpx.AsyncClient, url: str, **kwargs: object) -> tuple[int, dict, httpx.Headers]:
    response = await client.get(url, **kwargs)  # type: ignore[arg-type]
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
    return response.status_code, body, response.headers


async def test_routing_matches_rewrites_and_mutates_headers(stack: Stack) -> None:
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        status, body, headers = await get_json(
            client,
            f"{stack.base}/v1/orders/7",
            headers={
                "x-debug": "1",
                "x-gateway": "forged",
                "x-waypost-consumer": "admin",
                "x-waypost-x": "1",
            },
        )
        assert status == 200 and body["backend"] == "alpha"
        # No AuthPolicy on this gateway, yet identity headers still cannot be forged.
        assert not [name for name in body["headers"] if name.startswith("x-waypost-")]
        assert body["path"] == "/orders/7"  # rewrite
        assert body["headers"]["x-gateway"] == "waypost"  # add replaces a client's value
        assert "x-debug" not in body["headers"]
        assert headers["x-frame-options"] == "DENY"

        internal = await client.get(
            f"{stack.base}/v1/orders/7", headers={"x-echo-header-x-internal": "secret"}
        )
        assert "x-internal" not in internal.headers

        # Exact path beats the longer-living prefix; a header condition beats a bare prefix.
        assert (await get_json(client, f"{stack.base}/v1/orders/summary"))[1]["backend"] == "beta"
        assert (await get_json(client, f"{stack.base}/v1/orders/1", headers={"x-canary": "true"}))[1][
            "backend"
        ] == "beta"
        assert (await get_json(client, f"{stack.base}/items/42"))[1]["backend"] == "beta"

        # Prefixes match whole segments; methods are enforced; unmatched requests get 404.
        assert (await client.get(f"{stack.base}/v1/ordersx")).status_code == 404
        assert (await client.delete(f"{stack.base}/v1/orders/7")).status_code == 404
        assert (await client.get(f"{stack.base}/items/abc")).status_code == 404
        assert (await client.get(f"{stack.base}/only-api/x")).status_code == 404
        on_host = await get_json(client, f"{stack.base}/only-api/x", headers={"host": "api.example.com:8080"})
        assert on_host[0] == 200 and on_host[1]["backend"] == "beta"
        # Routes for every host still serve a host that has routes of its own.
        assert (await get_json(client, f"{stack.base}/split", headers={"host": "api.example.com"}))[0] == 200

        # Path normalization: dot segments and doubled slashes cannot dodge a route's prefix.
        normalized = await get_json(client, f"{stack.base}/v1/x/../orders//summary")
        assert normalized[1]["backend"] == "beta" and normalized[1]["path"] == "/v1/orders/summary"


async def test_weighted_split_within_tolerance(stack: Stack) -> None:
    counts: collections.Counter[str] = collections.Counter()
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        for _ in range(400):
            status, body, _ = await get_json(client, f"{stack.base}/split")
            assert status == 200
            counts[body["backend"]] += 1
    # 75/25 over 400 requests: a binomial standard deviation is ~8.7, so +-40 is > 4 sigma.
    assert abs(counts["alpha"] - 300) <= 40, counts
    assert counts["alpha"] + counts["beta"] == 400


async def test_policy_edit_goes_live_without_failing_requests(stack: Stack) -> None:
    failures: list[str] = []
    stop = asyncio.Event()

    async def traffic() -> int:
        sent = 0
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            while not stop.is_set():
                response = await client.get(f"{stack.base}/v1/orders/1")
                sent += 1
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:100]}")
        return sent

    load = asyncio.create_task(traffic())
    await asyncio.sleep(0.3)
    edited = policy_text(stack.port, stack.alpha, stack.beta) + (
        "---\nkind: Route\nname: fresh\ngateway: public\nmatch: {prefix: /fresh}\nbackend: beta\n"
    )
    started = time.monotonic()
    stack.write("policy.yaml", edited)

    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:

        async def fresh_live() -> bool:
            return (await client.get(f"{stack.base}/fresh")).status_code == 200

        await async_wait_until(fresh_live, timeout=5, interval=0.05)
    elapsed = time.monotonic() - started
    await asyncio.sleep(0.3)
    stop.set()
    sent = await load
    assert elapsed < 2.0, f"new route took {elapsed:.2f}s to go live"
    assert sent > 10 and not failures, failures[:5]


async def test_invalid_edit_keeps_serving_last_good_config(stack: Stack) -> None:
    before = stack.envoy.stats(filter="cluster_manager.cds.update_success")
    stack.write(
        "broken.yaml", "kind: Route\nname: bad\ngateway: public\nmatch: {prefix: /bad}\nbackend: ghost\n"
    )

    async def rejected() -> bool:
        status = await asyncio.to_thread(stack.waypost.status)
        return status["policy"]["last_error"] is not None

    await async_wait_until(rejected, timeout=5)
    status = await asyncio.to_thread(stack.waypost.status)
    assert any(
        "broken.yaml:5: Route bad: backend 'ghost' is not a Service" in e
        for e in status["policy"]["last_error"]["errors"]
    ), status
    assert "backend 'ghost' is not a Service" in stack.waypost.log_text()
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        assert (await client.get(f"{stack.base}/v1/orders/1")).status_code == 200
        assert (await client.get(f"{stack.base}/bad")).status_code == 404
    assert stack.envoy.stats(filter="cluster_manager.cds.update_success") == before
    assert stack.waypost.readyz() == 200  # still ready: the last good version is serving

    (stack.policies / "broken.yaml").unlink()  # the fix clears the error

    async def recovered() -> bool:
        status = await asyncio.to_thread(stack.waypost.status)
        return status["policy"]["last_error"] is None

    await async_wait_until(recovered, timeout=5)


async def test_moving_a_route_to_a_new_service_drops_no_request(
    stack: Stack, echo_backend: EchoFactory
) -> None:
    gamma = await echo_backend("gamma")
    failures: list[str] = []
    stop = asyncio.Event()

    async def traffic() -> None:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            while not stop.is_set():
                response = await client.get(f"{stack.base}/items/1")
                if response.status_code != 200:
                    failures.append(f"{response.status_code} {response.text[:100]}")

    load = asyncio.create_task(traffic())
    await asyncio.sleep(0.3)
    # `items` moves from beta to a brand-new Service, and beta loses its other routes too.
    text = policy_text(stack.port, stack.alpha, stack.beta)
    text = text.replace(
        'match: {regex: "/items/[0-9]+"}\nbackend: beta', 'match: {regex: "/items/[0-9]+"}\nbackend: gamma'
    )
    text += f'---\nkind: Service\nname: gamma\nendpoints: ["{gamma.address}"]\n'
    stack.write("policy.yaml", text)

    async def moved() -> bool:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            return (await client.get(f"{stack.base}/items/1")).json()["backend"] == "gamma"

    await async_wait_until(moved, timeout=5, interval=0.05)
    await asyncio.sleep(0.5)
    stop.set()
    await load
    assert not failures, failures[:5]
