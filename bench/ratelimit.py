"""Benchmark: rate-limit decisions per core, Redis round trips, and Envoy with a global limit.

Three figures, measured side by side in one run (the machine is shared; ratios matter):

1. ``ShouldRateLimit`` over gRPC against ``waypost ratelimit`` (one process, one event loop),
   in-process store and Redis store: decisions per second of the server's own CPU time
   (utime + stime from /proc), so the load generator's CPU does not count against it. Also the
   decision core alone (decode, decide, encode; no transport) in this process.
2. Redis round trips per decision: EVALSHA calls (INFO commandstats) / decisions.
3. Requests/s through Envoy (``--concurrency 1``, ``wrk``) on a route with a global limit that is
   never reached, and on routes with API-key auth (with and without a consumer limit never
   reached; once over HTTP ext_authz, once over gRPC, the default), vs a bare route: alternating
   runs, same Envoy, same backend.

    .venv/bin/python bench/ratelimit.py [--seconds 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import redis
import yaml
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_pb2
from envoy.service.ratelimit.v3 import rls_pb2

from waypost.demo import find_envoy
from waypost.filters.ratelimit.limiter import Limiter
from waypost.filters.ratelimit.service import RateLimitService
from waypost.filters.ratelimit.store import MemoryStore
from waypost.policies.loader import load_policies
from waypost.xds.bootstrap import build_bootstrap

SRC = Path(__file__).resolve().parents[1] / "src"
METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"


BENCH_KEY = "bench-api-key"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def policy_text(gateway_port: int, echo_port: int, grpc_port: int = 0) -> str:
    return f"""
kind: Gateway
name: bench
port: {gateway_port}
address: 127.0.0.1
auth_service: http
---
kind: Service
name: echo
endpoints: ["127.0.0.1:{echo_port}"]
---
kind: Route
name: bare
gateway: bench
match: {{prefix: /bare}}
backend: echo
---
kind: Route
name: limited
gateway: bench
match: {{prefix: /limited}}
backend: echo
rate_limit: never-reached
---
kind: RateLimitPolicy
name: never-reached
limits:
  - {{by: header:x-tenant, requests: 1000000000, per: second}}
---
kind: Route
name: auth
gateway: bench
match: {{prefix: /auth-only}}
backend: echo
auth: bench-keys
---
kind: Route
name: auth-limited
gateway: bench
match: {{prefix: /auth-limited}}
backend: echo
auth: bench-keys
rate_limit: per-consumer
---
kind: AuthPolicy
name: bench-keys
identity:
  - api_key: {{header: x-api-key}}
---
kind: RateLimitPolicy
name: per-consumer
limits:
  - {{by: consumer, requests: 1000000000, per: second}}
---
kind: Consumer
name: bench
api_keys: ["sha256:{hashlib.sha256(BENCH_KEY.encode()).hexdigest()}"]
---
kind: Gateway
name: bench-grpc
port: {grpc_port or gateway_port + 1}
address: 127.0.0.1
---
kind: Route
name: auth-grpc
gateway: bench-grpc
match: {{prefix: /auth-only}}
backend: echo
auth: bench-keys
---
kind: Route
name: auth-limited-grpc
gateway: bench-grpc
match: {{prefix: /auth-limited}}
backend: echo
auth: bench-keys
rate_limit: per-consumer
"""


def request_bytes(tenants: int = 1000) -> list[bytes]:
    return [
        rls_pb2.RateLimitRequest(
            domain="waypost",
            descriptors=[
                common_pb2.RateLimitDescriptor(
                    entries=[
                        common_pb2.RateLimitDescriptor.Entry(key="limit", value="never-reached/0"),
                        common_pb2.RateLimitDescriptor.Entry(key="header", value=f"tenant-{i}"),
                    ]
                )
            ],
        ).SerializeToString()
        for i in range(tenants)
    ]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spawn(argv: list[str], log: Path, src: Path = SRC) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=str(src), PYTHONUNBUFFERED="1")
    return subprocess.Popen(argv, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT)


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} never opened")


async def drive(port: int, seconds: float, concurrency: int = 64) -> int:
    requests = request_bytes()
    done = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(METHOD)
        stop = time.monotonic() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while time.monotonic() < stop:
                await call(requests[i % len(requests)])
                i += 1
                done += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done


def grpc_decisions(
    policies: Path, work: Path, seconds: float, redis_url: str | None, extra: tuple[str, ...] = ()
) -> tuple[float, float, int]:
    """(decisions per server CPU second, decisions per wall second, every decision made, warm-up included)."""
    port, admin = free_port(), free_port()
    argv = [sys.executable, "-m", "waypost", "ratelimit", "--policies", str(policies), "--port", str(port)]
    argv += ["--admin-port", str(admin), "--host", "127.0.0.1", "--no-watch", "--log-level", "warning"]
    if redis_url:
        argv += ["--redis", redis_url]
    argv += extra
    proc = spawn(argv, work / "ratelimit.log")
    try:
        wait_port(port)
        warm = asyncio.run(drive(port, 1.0))  # warm up (script load, connections)
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        count = asyncio.run(drive(port, seconds))
        cpu, wall = cpu_seconds(proc.pid) - cpu0, time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(10)
    return count / cpu, count / wall, warm + count


def decision_core(policies: Path, seconds: float) -> float:
    policy = load_policies(policies)
    limiter = Limiter(MemoryStore())
    limiter.apply(policy)
    service = RateLimitService(limiter)
    requests = [rls_pb2.RateLimitRequest.FromString(b) for b in request_bytes()]
    raw = request_bytes()

    # CPU time, not wall time: the machine is shared, and this is a per-core figure.
    n, stop, t0 = 0, time.monotonic() + seconds, time.process_time()
    while time.monotonic() < stop:
        for i in range(1000):
            service.answer(rls_pb2.RateLimitRequest.FromString(raw[i]))
        n += 1000
    assert requests
    return n / (time.process_time() - t0)


def wrk(port: int, path: str, seconds: float) -> float:
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            "-c32",
            f"-d{seconds:g}s",
            "-H",
            "x-tenant: bench",
            "-H",
            f"x-api-key: {BENCH_KEY}",
            f"http://127.0.0.1:{port}{path}",
        ],
        capture_output=True,
        text=True,
    )
    out = done.stdout
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    # A rare 503 (the decision service's 500 ms timeout on an overloaded machine) is noise; more
    # than 1% means the route is broken.
    if non2xx and (total is None or int(non2xx.group(1)) * 100 > int(total.group(1))):
        raise RuntimeError(f"{path}: {non2xx.group(1)} non-2xx responses\n{out}")
    assert match, out
    return float(match.group(1))


@contextlib.contextmanager
def envoy_stack(work: Path, src: Path) -> Iterator[tuple[dict[str, int], int, int]]:
    """waypost (from ``src``: xDS, RLS, HTTP and gRPC ext_authz), an echo backend and one Envoy;
    yields the gateway ports (by ext_authz transport) and the pids of waypost and Envoy."""
    work.mkdir()
    gateway, grpc_gateway, echo_port, xds, admin, rls, authz_http, authz = (free_port() for _ in range(8))
    policies = work / "envoy-policies"
    policies.mkdir()
    (policies / "all.yaml").write_text(policy_text(gateway, echo_port, grpc_gateway))
    procs = [
        spawn(
            [sys.executable, "-m", "waypost.demo.echo", "--name", "echo", "--port", str(echo_port)],
            work / "echo.log",
        ),
        spawn(
            [
                sys.executable,
                "-m",
                "waypost",
                "serve",
                "--policies",
                str(policies),
                "--xds-port",
                str(xds),
                "--admin-port",
                str(admin),
                "--host",
                "127.0.0.1",
                "--ratelimit-port",
                str(rls),
                "--authz-http-port",
                str(authz_http),
                "--authz-port",
                str(authz),
                "--no-watch",
                "--log-level",
                "warning",
            ],
            work / "waypost.log",
            src,
        ),
    ]
    bootstrap = build_bootstrap(
        node_id="bench",
        node_cluster="edge",
        xds_host="127.0.0.1",
        xds_port=xds,
        admin_port=0,
    )
    (work / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap))
    try:
        wait_port(xds)
        wait_port(rls)
        procs.append(
            spawn(
                [
                    str(find_envoy()),
                    "-c",
                    str(work / "bootstrap.yaml"),
                    "--concurrency",
                    "1",
                    "--use-dynamic-base-id",
                    "-l",
                    "error",
                ],
                work / "envoy.log",
            )
        )
        wait_port(gateway)
        time.sleep(0.5)
        wait_port(grpc_gateway)
        ports = {"http": gateway, "grpc": grpc_gateway}
        for path in PATHS:
            wrk(*_target(ports, path), 1)
        yield ports, procs[1].pid, procs[2].pid
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)


PATHS = ("/bare", "/limited", "/auth-only", "/auth-limited", "grpc /auth-only", "grpc /auth-limited")
"""The last two: the same auth routes on a Gateway whose ext_authz speaks gRPC (the default)."""


def _target(ports: dict[str, int], path: str) -> tuple[int, str]:
    transport, _, route_path = path.rpartition(" ")
    return ports[transport or "http"], route_path


def envoy_ratio(
    work: Path, seconds: float, rounds: int, sources: dict[str, Path]
) -> dict[str, dict[str, tuple[float, float, float]]]:
    """Per (source, path): median req/s, and CPU microseconds per request of waypost (its decision
    services) and of Envoy. Every source's stack runs at once and the runs alternate (source by
    source, path by path), so load from elsewhere hits all of them alike; the CPU figures barely
    move with that load, unlike req/s."""
    runs: dict[str, dict[str, list[tuple[float, float, float]]]] = {
        name: {p: [] for p in PATHS} for name in sources
    }
    with contextlib.ExitStack() as stack:
        stacks = {name: stack.enter_context(envoy_stack(work / name, src)) for name, src in sources.items()}
        for _ in range(rounds):
            for path in PATHS:
                for name, (gateway, waypost_pid, envoy_pid) in stacks.items():
                    before = cpu_seconds(waypost_pid), cpu_seconds(envoy_pid)
                    rate = wrk(*_target(gateway, path), seconds)
                    requests = rate * seconds
                    waypost_us = (cpu_seconds(waypost_pid) - before[0]) * 1e6 / requests
                    envoy_us = (cpu_seconds(envoy_pid) - before[1]) * 1e6 / requests
                    runs[name][path].append((rate, waypost_us, envoy_us))
    medians: dict[str, dict[str, tuple[float, float, float]]] = {}
    for name, paths in runs.items():
        medians[name] = {}
        for path, values in paths.items():
            rate, waypost_us, envoy_us = (statistics.median(v[i] for v in values) for i in range(3))
            medians[name][path] = (rate, waypost_us, envoy_us)
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--before",
        type=Path,
        help="also run Envoy against waypost from this src/ directory (an older checkout), alternating",
    )
    parser.add_argument("--envoy-only", action="store_true", help="only the through-Envoy figures")
    args = parser.parse_args()
    seconds = args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        policies = work / "policies"
        policies.mkdir()
        (policies / "all.yaml").write_text(policy_text(free_port(), free_port()))
        if not args.envoy_only:
            other_figures(policies, work, seconds)
        sources = {"this": SRC} | ({"before": args.before.resolve()} if args.before else {})
        figures = envoy_ratio(work, seconds, args.rounds, sources)
        for name, by_path in figures.items():
            bare = by_path["/bare"][0]
            print(
                f"Envoy --concurrency 1, wrk -c32, waypost {name} ({sources[name]}): bare {bare:,.0f} req/s"
            )
            for path, (rate, waypost_us, envoy_us) in by_path.items():
                print(
                    f"  {path:14s} {rate:7,.0f} req/s = {rate / bare:.2f} of bare; CPU per request: "
                    f"waypost {waypost_us:6.1f} us, Envoy {envoy_us:6.1f} us"
                )


def other_figures(policies: Path, work: Path, seconds: float) -> None:
    core = decision_core(policies, seconds)
    print(f"decision core (decode+decide+encode, in-process store): {core:,.0f} decisions/s")
    per_cpu, per_wall, _ = grpc_decisions(policies, work, seconds, None)
    print(
        f"RLS gRPC (waypost's HTTP/2 server), in-process store: {per_cpu:,.0f} decisions per server "
        f"CPU-second ({per_wall:,.0f}/s wall)"
    )
    per_cpu, per_wall, _ = grpc_decisions(policies, work, seconds, None, ("--ratelimit-grpcio",))
    print(
        f"RLS gRPC (grpcio aio server), in-process store: {per_cpu:,.0f} decisions per server "
        f"CPU-second ({per_wall:,.0f}/s wall)"
    )

    redis_bin = shutil.which("redis-server")
    if redis_bin:
        redis_port = free_port()
        server = spawn(
            [
                redis_bin,
                "--port",
                str(redis_port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            work / "redis.log",
        )
        try:
            wait_port(redis_port)
            client = redis.Redis(port=redis_port)
            client.config_resetstat()
            per_cpu, per_wall, decided = grpc_decisions(
                policies, work, seconds, f"redis://127.0.0.1:{redis_port}/0"
            )
            stats = client.info("commandstats")
            # Every command a client sent (the script's inner INCRBYs are counted separately).
            sent = sum(
                v["calls"]
                for k, v in stats.items()
                if k in ("cmdstat_evalsha", "cmdstat_eval", "cmdstat_script")
            ) + sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_multi", "cmdstat_exec"))
            print(
                f"RLS gRPC, Redis store: {per_cpu:,.0f} decisions per server CPU-second "
                f"({per_wall:,.0f}/s wall); {sent / max(1, decided):.3f} Redis commands sent per decision"
            )
        finally:
            server.terminate()
            server.wait(10)
    else:
        print("redis-server not installed: Redis figures skipped")


if __name__ == "__main__":
    main()
