"""The decision plane wired by waypost itself, through real Envoys bootstrapped with only --xds.

- the README's serve + bootstrap + envoy lines, run exactly as written: 401 / 200 / 429;
- two `waypost serve` replicas sharing a real Redis hold one consumer limit across both;
- a standalone `waypost authz --workers 2`, named by `--authz-address`, answers for a fleet
  (Envoy gRPC-health-checks it);
- grpc.health.v1.Health and reflection on the xDS and decision ports, with a real grpcio client;
- a route needing a decision service nothing serves shows in /readyz, /status and the log.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from support import (
    EXAMPLE_POLICIES,
    REPO_ROOT,
    EchoFactory,
    EnvoyProcess,
    WaypostProcess,
    async_wait_until,
    free_port,
    wait_until,
)
from support.procs import SRC_DIR
from support.redis import RedisProcess
from waypost.contract import AUTHZ_CLUSTER, AUTHZ_GRPC_SERVICE, RATELIMIT_CLUSTER
from waypost.filters.authz.core import hash_api_key
from waypost.xds.ads import ADS_SERVICE

pytestmark = pytest.mark.e2e

KEYS = {"acme": "acme-key-1", "globex": "globex-key-1"}


def policy_text(port: int, backend: str, *, limit: int = 10) -> str:
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
auth: keys
rate_limit: per-consumer
---
kind: Route
name: open
gateway: public
match: {{prefix: /open}}
backend: echo
---
kind: AuthPolicy
name: keys
identity: [{{api_key: {{header: x-api-key}}}}]
---
kind: RateLimitPolicy
name: per-consumer
limits: [{{by: consumer, requests: {limit}, per: hour}}]
---
kind: Consumer
name: acme
api_keys: ["{hash_api_key(KEYS["acme"])}"]
---
kind: Consumer
name: globex
api_keys: ["{hash_api_key(KEYS["globex"])}"]
"""


def write_policies(tmp_path: Path, port: int, backend: str, name: str = "policies") -> Path:
    directory = tmp_path / name
    directory.mkdir()
    (directory / "policy.yaml").write_text(policy_text(port, backend))
    return directory


async def call(port: int, consumer: str | None, path: str = "/orders/1") -> httpx.Response:
    headers = {"x-api-key": KEYS[consumer]} if consumer else {}
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        return await client.get(f"http://127.0.0.1:{port}{path}", headers=headers)


async def counted(port: int, consumer: str) -> None:
    """Until an answer carries limit headers: Envoy reaches both decision services (both filters
    fail open or closed before that, so no request may slip through uncounted)."""

    async def ready() -> bool:
        response = await call(port, consumer)
        return response.status_code == 200 and "ratelimit-limit" in response.headers

    await async_wait_until(ready, timeout=20, interval=0.2)


# --- the README, literally -----------------------------------------------------------------------


def readme_lines() -> dict[str, str]:
    text = (REPO_ROOT / "README.md").read_text()
    block = text.split("## The command line", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    lines = [line.strip() for line in block.splitlines()]
    return {
        "serve": next(line for line in lines if line.startswith("waypost serve --policies policies/")),
        "bootstrap": next(line for line in lines if line.startswith("waypost bootstrap ")),
        "envoy": next(line for line in lines if line.startswith("envoy -c ")),
    }


def test_readme_lines_give_401_200_429(tmp_path: Path) -> None:
    lines = readme_lines()
    # What a new user copies: no decision-service flag anywhere, only the xDS address.
    assert "--authz" not in lines["bootstrap"] and "--ratelimit" not in lines["bootstrap"]
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("this test runs the README's fixed ports in a network namespace: needs root and unshare")
    shutil.copytree(EXAMPLE_POLICIES, tmp_path / "policies")
    (tmp_path / "lines.json").write_text(json.dumps(lines))
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), str(REPO_ROOT / "tests")])
    proc = subprocess.run(
        [
            *("unshare", "--net", "--mount", "--ipc", sys.executable, "-m", "support.readme_run"),
            *(str(tmp_path), str(tmp_path / "lines.json")),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    log = (
        (tmp_path / "readme-run.log").read_text(errors="replace")
        if (tmp_path / "readme-run.log").exists()
        else ""
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"no_key": 401, "acme": 200, "trial": [200, 200, 429]}, log[-4000:]


# --- a fleet: replicas, Redis, standalone decision services ----------------------------------------


async def test_two_replicas_share_one_consumer_limit_through_redis(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_redis: Callable[[], RedisProcess],
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    echo = await echo_backend("orders")
    port_a, port_b = free_port(), free_port()
    # The same files on both replicas but for the gateway port (each Envoy here shares one host).
    policies_a = write_policies(tmp_path, port_a, echo.address, "policies-a")
    policies_b = write_policies(tmp_path, port_b, echo.address, "policies-b")

    redis_server = await asyncio.to_thread(start_redis)

    def start() -> tuple[WaypostProcess, WaypostProcess]:
        redis = ["--redis", redis_server.url]
        waypost_a = start_waypost(policies_a, args=redis)
        waypost_b = start_waypost(policies_b, args=redis)
        # Bootstraps with only --xds: each Envoy learns its replica's decision services over EDS.
        envoy_a = start_envoy(xds_port=waypost_a.xds_port, node_id="a")
        envoy_b = start_envoy(xds_port=waypost_b.xds_port, node_id="b")
        assert [c["name"] for c in envoy_a.bootstrap["static_resources"]["clusters"]] == ["waypost_xds"]
        envoy_a.wait_for_listener(port_a)
        envoy_b.wait_for_listener(port_b)
        return waypost_a, waypost_b

    waypost_a, waypost_b = await asyncio.to_thread(start)
    await counted(port_a, "globex")
    await counted(port_b, "globex")
    statuses = [(await call(port_a if n % 2 else port_b, "acme")).status_code for n in range(10)]
    assert statuses == [200] * 10
    assert (await call(port_a, "acme")).status_code == 429
    assert (await call(port_b, "acme")).status_code == 429
    assert (await call(port_a, None)).status_code == 401
    for waypost in (waypost_a, waypost_b):
        clusters = (await asyncio.to_thread(waypost.status))["decision_services"]["clusters"]
        # One hop: ext_authz counts the consumer limit itself (in Redis); no route needs the RLS.
        assert clusters[RATELIMIT_CLUSTER]["needed_by"] == []
        assert clusters[AUTHZ_CLUSTER]["needed_by"] == ["orders"]
        assert await asyncio.to_thread(
            waypost.metric, "waypost_ratelimit_decisions_total", result="over_limit"
        )


async def test_standalone_authz_workers_answer_for_a_fleet(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    echo = await echo_backend("orders")
    port, authz_port = free_port(), free_port()
    policies = write_policies(tmp_path, port, echo.address)
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    log_path = tmp_path / "authz.log"
    argv = [sys.executable, "-m", "waypost", "authz", "--policies", str(policies), "--host", "127.0.0.1"]
    argv += ["--port", str(authz_port), "--workers", "2"]
    with log_path.open("wb") as log:
        authz = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: log_path.read_text().count("waypost authz serving") == 2, 30, 0.1)
        waypost = await asyncio.to_thread(
            start_waypost, policies, args=["--authz-address", f"127.0.0.1:{authz_port}"]
        )
        envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
        await asyncio.to_thread(envoy.wait_for_listener, port)
        await counted(port, "globex")
        assert (await call(port, None)).status_code == 401
        allowed = await call(port, "acme")
        assert allowed.status_code == 200 and allowed.json()["headers"]["x-waypost-consumer"] == "acme"
        status = (await asyncio.to_thread(waypost.status))["decision_services"]["clusters"][AUTHZ_CLUSTER]
        assert status["served_by"] == "external" and status["local_port"] is None
        assert status["endpoints"] == [f"127.0.0.1:{authz_port}"] and status["health_checked"]
        # Envoy's gRPC health check of the named endpoint says healthy.
        stats = await asyncio.to_thread(envoy.stats, f"cluster.{AUTHZ_CLUSTER}.health_check")
        assert stats[f"cluster.{AUTHZ_CLUSTER}.health_check.success"] >= 1, stats
        assert stats.get(f"cluster.{AUTHZ_CLUSTER}.health_check.failure", 0) == 0, stats
        assert (await asyncio.to_thread(waypost.metric, "waypost_authz_decisions_total")) is None
    finally:
        authz.terminate()
        try:
            authz.wait(30)
        except subprocess.TimeoutExpired:
            authz.kill()
            authz.wait(10)


# --- health, reflection, and what nothing serves ----------------------------------------------------


def health(port: int, service: str) -> int:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


def listed_services(port: int) -> set[str]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        (reply,) = list(
            stub.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
            )
        )
        return {service.name for service in reply.list_services_response.service}


def test_health_and_reflection_on_grpcio_ports(
    tmp_path: Path, start_waypost: Callable[..., WaypostProcess]
) -> None:
    broken = tmp_path / "policies"
    broken.mkdir()
    (broken / "policy.yaml").write_text("kind: Gateway\nname: public\nport: nope\n")
    waypost = start_waypost(broken, wait=False)
    # No valid policy yet: the xDS port answers, NOT_SERVING.
    wait_until(
        lambda: health(waypost.xds_port, ADS_SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING, 30
    )
    assert health(waypost.xds_port, "") == health_pb2.HealthCheckResponse.NOT_SERVING
    (broken / "policy.yaml").write_text(policy_text(free_port(), "127.0.0.1:9"))
    wait_until(lambda: health(waypost.xds_port, ADS_SERVICE) == health_pb2.HealthCheckResponse.SERVING, 30)
    assert health(waypost.xds_port, "") == health_pb2.HealthCheckResponse.SERVING
    assert {
        ADS_SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= listed_services(waypost.xds_port)
    with pytest.raises(grpc.RpcError) as unknown:
        health(waypost.xds_port, "no.such.Service")
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    authz_port = waypost.decision_port(AUTHZ_CLUSTER)
    assert health(authz_port, AUTHZ_GRPC_SERVICE) == health_pb2.HealthCheckResponse.SERVING
    assert AUTHZ_GRPC_SERVICE in listed_services(authz_port)
    with pytest.raises(grpc.RpcError) as missing, grpc.insecure_channel(f"127.0.0.1:{authz_port}") as channel:
        channel.unary_unary("/no.such.Service/Method")(b"", timeout=5)
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_route_nobody_serves_shows_before_any_request(
    tmp_path: Path, start_waypost: Callable[..., WaypostProcess]
) -> None:
    policies = write_policies(tmp_path, free_port(), "127.0.0.1:9")
    # A limit keyed by a header: only the RLS counts it (a consumer limit ext_authz counts itself).
    policy = policies / "policy.yaml"
    policy.write_text(policy.read_text().replace("{by: consumer,", '{by: "header:x-tenant",'))
    waypost = start_waypost(policies, wait=False, args=["--no-ratelimit"])
    wait_until(lambda: waypost.status()["policy"]["version"], 30, 0.1)
    assert waypost.readyz() == 503
    problems = waypost.admin_json("/readyz")["problems"]
    assert len(problems) == 1 and "route orders needs the rate-limit service" in problems[0], problems
    assert "--ratelimit-address" in problems[0]
    unserved = waypost.status()["decision_services"]["unserved"]
    assert [(p["route"], p["cluster"]) for p in unserved] == [("orders", RATELIMIT_CLUSTER)]
    wait_until(lambda: "route needs a decision service nothing serves" in waypost.log_text(), 10)
    # ext_authz is served (in process): only the rate limit is missing.
    assert waypost.status()["decision_services"]["clusters"][AUTHZ_CLUSTER]["served_by"] == "this process"
