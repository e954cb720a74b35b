"""End to end: the gateway features Envoy enforces itself (issue 6), through a real Envoy.

One stack (waypost + Envoy + echo backends) carries every HTTP feature: CORS, compression,
caching, request limits and deny rules, version routing, mirroring, fault injection, request ids,
the JSON access log and per-gateway stats. Upstream TLS, gRPC and tracing have their own stacks.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from support import EchoFactory, EchoServer, EnvoyProcess, WaypostProcess, async_wait_until, free_port

pytestmark = pytest.mark.e2e

APP = "https://app.example.com"


def policy_text(port: int, alpha: EchoServer, beta: EchoServer, port2: int) -> str:
    return f"""
kind: Gateway
name: compressing
port: {port2}
address: 127.0.0.1
compression: {{algorithms: [zstd, brotli, gzip], min_bytes: 100, content_types: [application/json]}}
---
kind: Route
name: everything-compressed
gateway: compressing
match: {{prefix: /}}
backend: alpha
---
kind: Route
name: never-compressed
gateway: compressing
match: {{prefix: /raw}}
backend: alpha
compression: false
---
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
limits:
  max_request_bytes: 65536
  max_request_headers_kb: 16
  methods: [GET, HEAD, POST, OPTIONS]
  idle_timeout: 500ms
deny:
  - paths: ["/\\\\.git(/.*)?"]
  - headers: {{user-agent: "(?i).*sqlmap.*"}}
access_log: true
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
name: app
gateway: public
match: {{prefix: /app}}
backend: alpha
cors: {{origins: ["{APP}"], methods: [GET, POST], headers: [authorization], max_age: 10m}}
compression: true
deny: [{{paths: ["/app/internal(/.*)?"]}}]
---
kind: Route
name: plain
gateway: public
match: {{prefix: /plain}}
backend: alpha
---
kind: Route
name: cached
gateway: public
match: {{prefix: /cached}}
backend: alpha
cache: true
---
kind: Route
name: api-v1
gateway: public
match: {{prefix: /api}}
backend: alpha
---
kind: Route
name: api-v2-header
gateway: public
match: {{prefix: /api, headers: {{accept-version: "2"}}}}
backend: beta
rewrite: {{prefix: /api}}
---
kind: Route
name: api-v2-prefix
gateway: public
match: {{prefix: /v2/api}}
backend: beta
rewrite: {{prefix: /api}}
---
kind: Route
name: shadowed
gateway: public
match: {{prefix: /shadowed}}
backend: alpha
mirror: {{service: beta, percent: 100}}
---
kind: Route
name: chaos-abort
gateway: public
match: {{prefix: /chaos/abort}}
backend: alpha
fault_injection: {{abort: {{status: 418, percent: 100}}}}
---
kind: Route
name: chaos-delay
gateway: public
match: {{prefix: /chaos/delay}}
backend: alpha
fault_injection: {{delay: {{duration: 50ms, percent: 100}}}}
"""


@dataclass
class Stack:
    port: int
    port2: int
    alpha: EchoServer
    beta: EchoServer
    waypost: WaypostProcess
    envoy: EnvoyProcess

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
async def stack(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> Stack:
    alpha, beta = await echo_backend("alpha"), await echo_backend("beta")
    port, port2 = free_port(), free_port()
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(policy_text(port, alpha, beta, port2))
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port, node_cluster="edge")
    await asyncio.to_thread(envoy.wait_for_listener, port)
    await asyncio.to_thread(envoy.wait_for_listener, port2)
    return Stack(port, port2, alpha, beta, waypost, envoy)


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(trust_env=False, timeout=5)


async def test_cors_preflight_answered_by_envoy(stack: Stack) -> None:
    async with client() as http:
        seen = len(stack.alpha.requests)
        preflight = await http.options(
            f"{stack.base}/app/x",
            headers={"origin": APP, "access-control-request-method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == APP
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-max-age"] == "600"
        assert len(stack.alpha.requests) == seen  # Envoy answered; the backend never saw it

        allowed = await http.get(f"{stack.base}/app/x", headers={"origin": APP})
        assert allowed.headers["access-control-allow-origin"] == APP
        evil = await http.get(f"{stack.base}/app/x", headers={"origin": "https://evil.example"})
        assert evil.status_code == 200
        assert not [h for h in evil.headers if h.startswith("access-control-")]


async def test_compression_by_accept_encoding_and_size(stack: Stack) -> None:
    pad = {"x-pad": "a" * 4000}  # the echo body repeats request headers: > min_bytes
    async with client() as http:
        big = await http.get(f"{stack.base}/app/big", headers={"accept-encoding": "gzip", **pad})
        assert big.headers["content-encoding"] == "gzip"
        assert json.loads(big.content)["backend"] == "alpha"  # httpx decoded it
        raw = await http.send(
            http.build_request("GET", f"{stack.base}/app/big", headers={"accept-encoding": "gzip", **pad}),
            stream=True,
        )
        compressed = b"".join([chunk async for chunk in raw.aiter_raw()])
        assert len(compressed) < 2000 and json.loads(gzip.decompress(compressed))["path"] == "/app/big"

        small = await http.get(f"{stack.base}/app/small", headers={"accept-encoding": "gzip"})
        assert "content-encoding" not in small.headers  # under min_bytes (1024)
        identity = await http.get(f"{stack.base}/app/big", headers={"accept-encoding": "identity", **pad})
        assert "content-encoding" not in identity.headers
        # A route without `compression` is never compressed.
        plain = await http.get(f"{stack.base}/plain/big", headers={"accept-encoding": "gzip", **pad})
        assert "content-encoding" not in plain.headers

        # A Gateway's `compression`: every route, the client's preferred algorithm among those
        # enabled, its own min_bytes; `compression: false` opts a route out.
        base2 = f"http://127.0.0.1:{stack.port2}"
        for accept, expected in (("br", "br"), ("zstd", "zstd"), ("gzip;q=1, br;q=0.5", "gzip")):
            response = await http.get(f"{base2}/x", headers={"accept-encoding": accept})
            assert response.headers.get("content-encoding") == expected, (accept, response.headers)
        raw = await http.get(f"{base2}/raw/x", headers={"accept-encoding": "gzip"})
        assert "content-encoding" not in raw.headers


async def test_cache_honours_cache_control(stack: Stack) -> None:
    async with client() as http:
        # Envoy caches only responses carrying a Date, as origin servers send (RFC 9110 6.6.1).
        date = email.utils.formatdate(usegmt=True)
        cacheable = {"x-echo-header-cache-control": "public, max-age=60", "x-echo-header-date": date}
        first = await http.get(f"{stack.base}/cached/a", headers=cacheable)
        second = await http.get(f"{stack.base}/cached/a", headers=cacheable)
        assert first.status_code == second.status_code == 200
        assert "age" in second.headers and second.json() == first.json()
        assert [r.path for r in stack.alpha.requests].count("/cached/a") == 1

        no_store = {"x-echo-header-cache-control": "no-store", "x-echo-header-date": date}
        for _ in range(2):
            assert (await http.get(f"{stack.base}/cached/b", headers=no_store)).status_code == 200
        assert [r.path for r in stack.alpha.requests].count("/cached/b") == 2

        # A request with credentials is never answered from the shared cache.
        for _ in range(2):
            await http.get(f"{stack.base}/cached/private", headers={**cacheable, "authorization": "Bearer t"})
        assert [r.path for r in stack.alpha.requests].count("/cached/private") == 2

        # Routes without `cache: true` never cache, whatever the upstream says.
        for _ in range(2):
            await http.get(f"{stack.base}/plain/c", headers=cacheable)
        assert [r.path for r in stack.alpha.requests].count("/plain/c") == 2


async def test_limits_and_native_deny_rules(stack: Stack) -> None:
    async with client() as http:
        seen = len(stack.alpha.requests)
        assert (await http.post(f"{stack.base}/plain/x", content=b"x" * 70_000)).status_code == 413
        assert (await http.post(f"{stack.base}/plain/x", content=b"x" * 1000)).status_code == 200
        assert (await http.get(f"{stack.base}/plain/x", headers={"x-big": "b" * 20_000})).status_code == 431
        assert (await http.delete(f"{stack.base}/plain/x")).status_code == 403  # method not allowed
        assert (await http.get(f"{stack.base}/.git/config")).status_code == 403  # gateway rule
        assert (
            await http.get(f"{stack.base}/plain/x", headers={"user-agent": "sqlmap/1.7"})
        ).status_code == 403
        assert (await http.get(f"{stack.base}/app/internal/keys")).status_code == 403  # route rule
        # A route with rules of its own keeps the gateway's (one RBAC filter: its per-route
        # config replaces the filter's rules, so it repeats them).
        assert (
            await http.get(f"{stack.base}/app/x", headers={"user-agent": "sqlmap/1.7"})
        ).status_code == 403
        assert (await http.delete(f"{stack.base}/app/x")).status_code == 403
        assert (await http.get(f"{stack.base}/plain/internal/keys")).status_code == 200  # not this route
        # An encoded slash cannot smuggle a path past a rule: Envoy redirects to the decoded path.
        encoded = await http.get(f"{stack.base}/app/x%2F..%2Finternal/keys")
        assert encoded.status_code in (307, 403)
        # Only the two allowed requests reached the backend: every refusal happened in Envoy.
        assert len(stack.alpha.requests) == seen + 2
    assert (stack.envoy.stat("http.public.rbac.denied") or 0) >= 6

    # A keep-alive connection left idle past limits.idle_timeout (500ms) is timed out by Envoy
    # (which then drains it: for HTTP/1.1 the socket closes after Envoy's drain period).
    idle_stat = "http.public.downstream_cx_idle_timeout"
    before = stack.envoy.stat(idle_stat) or 0
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as conn:
        conn.sendall(b"GET /plain/x HTTP/1.1\r\nhost: x\r\n\r\n")
        assert (await asyncio.to_thread(conn.recv, 65536)).startswith(b"HTTP/1.1 200")

        async def idle_timed_out() -> bool:
            return (await asyncio.to_thread(stack.envoy.stat, idle_stat) or 0) > before

        await async_wait_until(idle_timed_out, timeout=5)


async def test_version_routing_mirroring_and_faults(stack: Stack) -> None:
    async with client() as http:
        v1 = (await http.get(f"{stack.base}/api/orders")).json()
        v2 = (await http.get(f"{stack.base}/api/orders", headers={"accept-version": "2"})).json()
        v2_prefix = (await http.get(f"{stack.base}/v2/api/orders")).json()
        assert v1["backend"] == "alpha"
        assert v2["backend"] == "beta" and v2_prefix["backend"] == "beta"
        assert v2_prefix["path"] == "/api/orders"

        shadowed = await http.get(f"{stack.base}/shadowed/1")
        assert shadowed.json()["backend"] == "alpha"

        async def mirrored() -> bool:
            return any(r.path == "/shadowed/1" for r in stack.beta.requests)

        await async_wait_until(mirrored, timeout=5)
        copy = next(r for r in stack.beta.requests if r.path == "/shadowed/1")
        assert copy.headers["host"].endswith("-shadow")  # Envoy marks the copy

        seen = len(stack.alpha.requests)
        abort = await http.get(f"{stack.base}/chaos/abort")
        assert abort.status_code == 418 and len(stack.alpha.requests) == seen
        assert (await http.get(f"{stack.base}/chaos/delay")).status_code == 200
    assert stack.envoy.stat("http.public.fault.aborts_injected") == 1
    assert stack.envoy.stat("http.public.fault.delays_injected") == 1


async def test_request_ids_access_log_and_stats(stack: Stack) -> None:
    async with client() as http:
        response = await http.get(f"{stack.base}/plain/logged", headers={"x-request-id": "forged"})
        request_id = response.headers["x-request-id"]
        assert request_id != "forged"  # an edge gateway does not trust a client's id
        assert response.json()["headers"]["x-request-id"] == request_id
        denied = await http.get(f"{stack.base}/.git/HEAD")
        assert denied.status_code == 403 and denied.headers["x-request-id"]

    def logged() -> list[dict]:
        lines = stack.envoy.output_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    async def both_logged() -> bool:
        return {e["request_id"] for e in logged()} >= {request_id, denied.headers["x-request-id"]}

    await async_wait_until(both_logged, timeout=10)
    entry = next(e for e in logged() if e["request_id"] == request_id)
    assert entry["route"] == "plain" and entry["upstream"] == "alpha" and entry["status"] == 200
    assert entry["upstream_host"] == stack.alpha.address and entry["gateway"] == "public"
    assert isinstance(entry["duration_ms"], int) and entry["path"] == "/plain/logged"
    assert "consumer" in entry  # null here: no ext_authz in front of this route
    refused = next(e for e in logged() if e["request_id"] == denied.headers["x-request-id"])
    assert refused["status"] == 403 and refused["upstream"] is None

    stats = stack.envoy.stats(filter=r"^http\.public\.downstream_rq_total$")
    assert stats["http.public.downstream_rq_total"] >= 2
