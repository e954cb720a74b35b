"""One hop: the ext_authz decision counts consumer quotas itself, through a real Envoy (hour
windows, so a slow run never crosses a window boundary mid-count).

On a route whose AuthPolicy the decision service decides, limits keyed by consumer or plan are
counted in the ext_authz call (no second call to the RLS); the 429 and its headers are those the
RLS path gives. Both transports (gRPC Check, and the HTTP endpoint of ``auth_service: http``),
plans, shadow limits and dry-run auth; then two decision-service replicas sharing a real Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from support import EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until, free_ports, wait_until
from support.procs import SRC_DIR
from support.redis import RedisProcess, find_redis_server

pytestmark = pytest.mark.e2e

CONSUMERS = ("acme", "globex", "initech", "hooli", "umbrella")
RATE_HEADERS = ("ratelimit-limit", "ratelimit-remaining")


def key(consumer: str) -> str:
    return f"{consumer}-key-1"


def policy_text(grpc_port: int, http_port: int, backend: str) -> str:
    consumers = "".join(
        f"---\nkind: Consumer\nname: {name}\n{'plan: gold' + chr(10) if name == 'initech' else ''}"
        f'api_keys: ["sha256:{hashlib.sha256(key(name).encode()).hexdigest()}"]\n'
        for name in CONSUMERS
    )
    return f"""
kind: Gateway
name: grpc-gw
port: {grpc_port}
address: 127.0.0.1
---
kind: Gateway
name: http-gw
port: {http_port}
address: 127.0.0.1
auth_service: http
---
kind: Service
name: echo
endpoints: ["{backend}"]
---
kind: Route
name: orders
gateway: grpc-gw
match: {{prefix: /orders}}
backend: echo
auth: keys
rate_limit: per-consumer
---
kind: Route
name: tenants
gateway: grpc-gw
match: {{prefix: /tenants}}
backend: echo
rate_limit: per-tenant
---
kind: Route
name: watched
gateway: grpc-gw
match: {{prefix: /watched}}
backend: echo
auth: keys
rate_limit: watch-only
---
kind: Route
name: trial
gateway: grpc-gw
match: {{prefix: /trial}}
backend: echo
auth: trial-keys
rate_limit: trial-limit
---
kind: Route
name: orders-http
gateway: http-gw
match: {{prefix: /orders}}
backend: echo
auth: keys
rate_limit: per-consumer-http
---
kind: AuthPolicy
name: keys
identity:
  - api_key: {{header: x-api-key}}
---
kind: AuthPolicy
name: trial-keys
mode: dry_run
identity:
  - api_key: {{header: x-api-key}}
---
kind: RateLimitPolicy
name: per-consumer
limits:
  - {{by: consumer, requests: 3, per: hour}}
plans:
  gold: {{requests: 5, per: hour}}
---
kind: RateLimitPolicy
name: per-consumer-http
limits:
  - {{by: consumer, requests: 3, per: hour}}
---
kind: RateLimitPolicy
name: per-tenant
limits:
  - {{by: "header:x-tenant", requests: 3, per: hour}}
---
kind: RateLimitPolicy
name: watch-only
shadow: true
limits:
  - {{by: consumer, requests: 1, per: hour}}
---
kind: RateLimitPolicy
name: trial-limit
limits:
  - {{by: consumer, requests: 2, per: hour}}
{consumers}"""


def rls_calls(envoy: EnvoyProcess) -> int:
    return envoy.stat("cluster.waypost_ratelimit.upstream_rq_total") or 0


def shape(response: httpx.Response) -> tuple[int, dict[str, str], bytes, set[str]]:
    """What a client sees of a 429, less the seconds left in the window (they tick on)."""
    headers = {name: response.headers.get(name, "") for name in RATE_HEADERS}
    assert 1 <= int(response.headers["ratelimit-reset"]) <= 3600
    assert int(response.headers["retry-after"]) == int(response.headers["ratelimit-reset"])
    rate_names = {n for n in response.headers if n.startswith("ratelimit-") or n == "retry-after"}
    return response.status_code, headers, response.content, rate_names


async def test_one_hop_quota_matches_the_rls_path(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    echo = await echo_backend("echo")
    grpc_gw, http_gw = free_ports(2)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(policy_text(grpc_gw, http_gw, echo.address))
    # waypost serve runs ext_authz (both transports) and the RLS itself; Envoy learns them over CDS.
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, grpc_gw)
    await asyncio.to_thread(envoy.wait_for_listener, http_gw)

    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:

        async def call(
            path: str, consumer: str | None = None, port: int = grpc_gw, **headers: str
        ) -> httpx.Response:
            if consumer is not None:
                headers["x-api-key"] = key(consumer)
            return await client.get(f"http://127.0.0.1:{port}{path}", headers=headers)

        # The RLS path first (a header-keyed limit stays there); it also opens Envoy's connection.
        async def rls_answers() -> bool:
            return "ratelimit-limit" in (await call("/tenants", **{"x-tenant": "warmup"})).headers

        await async_wait_until(rls_answers, timeout=15, interval=0.2)
        assert [(await call("/tenants", **{"x-tenant": "t1"})).status_code for _ in range(3)] == [200] * 3
        rls_429 = await call("/tenants", **{"x-tenant": "t1"})
        assert rls_429.status_code == 429

        # One hop: the consumer limit is counted by ext_authz, and Envoy never asks the RLS.
        before = rls_calls(envoy)
        allowed = [await call("/orders/1", "acme") for _ in range(3)]
        assert [r.status_code for r in allowed] == [200] * 3
        assert [r.headers["ratelimit-remaining"] for r in allowed] == ["2", "1", "0"]
        assert allowed[0].headers["ratelimit-limit"] == "3"
        hop_429 = await call("/orders/1", "acme")
        assert shape(hop_429) == shape(rls_429)
        assert rls_calls(envoy) == before

        # The same over the HTTP endpoint (auth_service: http).
        http_allowed = [await call("/orders/1", "acme", port=http_gw) for _ in range(3)]
        assert [r.status_code for r in http_allowed] == [200] * 3
        assert http_allowed[-1].headers["ratelimit-remaining"] == "0"
        assert shape(await call("/orders/1", "acme", port=http_gw)) == shape(rls_429)

        # Plans: a gold consumer gets 5 instead of 3; others keep their own counts.
        gold = [(await call("/orders/1", "initech")).status_code for _ in range(6)]
        assert gold == [200] * 5 + [429]
        assert (await call("/orders/1", "globex")).headers["ratelimit-remaining"] == "2"
        # No credential: 401, never counted.
        missing = await call("/orders/1")
        assert missing.status_code == 401 and "ratelimit-limit" not in missing.headers

        # Shadow: over the limit, still served, with the limit headers.
        watched = [await call("/watched", "hooli") for _ in range(3)]
        assert [r.status_code for r in watched] == [200] * 3
        assert watched[-1].headers["ratelimit-remaining"] == "0"

        # Dry-run auth: a caller without credentials passes and is not counted; a known one is.
        assert [(await call("/trial")).status_code for _ in range(3)] == [200] * 3
        trial = [(await call("/trial", "umbrella")).status_code for _ in range(3)]
        assert trial == [200, 200, 429]
        assert rls_calls(envoy) == before

    # The RLS carries no consumer descriptor at all for these routes.
    dump = envoy.config_dump()
    assert "limit" in str(dump) and "per-consumer/0" not in str(dump) and "per-tenant/0" in str(dump)
    consumers = {r.headers.get("x-waypost-consumer") for r in echo.requests}
    assert {"acme", "initech", "globex", "hooli", "umbrella"} <= consumers


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    binary = find_redis_server()
    if binary is None:
        pytest.fail("redis-server is not installed: run `make system-deps`", pytrace=False)
    process = RedisProcess(workdir=tmp_path, binary=binary).start()
    yield process
    process.stop()


async def test_replicas_share_exact_quotas_in_redis(
    tmp_path: Path,
    echo_backend: EchoFactory,
    redis_server: RedisProcess,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    """Two decision services (waypost serve's, and a `waypost authz` replica) on one Redis: one
    consumer's requests through either count against one quota, one Redis command per decision."""
    echo = await echo_backend("echo")
    grpc_gw, http_gw, replica_port, replica_http = free_ports(4)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(policy_text(grpc_gw, http_gw, echo.address))
    waypost = await asyncio.to_thread(start_waypost, policies, args=["--redis", redis_server.url])
    replica_argv = [
        sys.executable,
        "-m",
        "waypost",
        "authz",
        "--policies",
        str(policies),
        "--host",
        "127.0.0.1",
    ]
    replica_argv += [
        "--port",
        str(replica_port),
        "--http-port",
        str(replica_http),
        "--redis",
        redis_server.url,
    ]
    log = (tmp_path / "replica.log").open("wb")
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    replica = subprocess.Popen(replica_argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
        await asyncio.to_thread(envoy.wait_for_listener, grpc_gw)
        wait_until(lambda: b"waypost authz serving" in (tmp_path / "replica.log").read_bytes(), 20, 0.1)
        with redis_server.client() as redis:
            redis.config_resetstat()

        async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
            through_envoy = f"http://127.0.0.1:{grpc_gw}/orders/1"
            # The replica's HTTP endpoint, asked the way Envoy asks it.
            direct = f"http://127.0.0.1:{replica_http}/_waypost/orders/orders/1"
            headers = {"x-api-key": key("acme")}

            warmups: list[int] = []

            async def envoy_ready() -> bool:
                answer = await client.get(through_envoy, headers={"x-api-key": key("globex")})
                warmups.append(answer.status_code)
                return answer.status_code == 200

            await async_wait_until(envoy_ready, timeout=15, interval=0.2)
            first = await client.get(through_envoy, headers=headers)
            second = await client.get(direct, headers=headers)
            third = await client.get(through_envoy, headers=headers)
            assert [first.status_code, second.status_code, third.status_code] == [200, 200, 200]
            assert [r.headers["ratelimit-remaining"] for r in (first, second, third)] == ["2", "1", "0"]
            assert (await client.get(direct, headers=headers)).status_code == 429
            over = await client.get(through_envoy, headers=headers)
            assert over.status_code == 429 and over.headers["ratelimit-remaining"] == "0"

        with redis_server.client() as redis:
            stats = redis.info("commandstats")
        # One EVALSHA per counted decision (globex's warm-ups and acme's five), nothing else
        # per decision (the script's own INCRBY/PEXPIRE run inside Redis).
        counted = sum(1 for status in warmups if status == 200) + 5
        assert stats["cmdstat_evalsha"]["calls"] == counted, stats
        assert not {"cmdstat_eval", "cmdstat_multi", "cmdstat_get"} & stats.keys(), stats
    finally:
        replica.terminate()
        replica.wait(20)
