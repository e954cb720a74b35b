"""Benchmark: the cost of waypost ext_authz on an API-key route, side by side with no auth.

One run starts an upstream (a second Envoy answering 200 itself), `waypost serve` (xDS),
`waypost authz --workers W` (gRPC Check and the HTTP endpoint), and one Envoy
(`--concurrency 1`) bootstrapped with all of them. Routes share the upstream: `/open` (no auth),
`/keyed` on a gateway asking over gRPC and `/keyed` on a gateway with `auth_service: http`
(AuthPolicy with an api_key identity). `wrk` drives each in turn (alternating, best of
``--rounds``: the machine is shared and noisy) and reports requests/s and p50/p99; the headline
is the ratio keyed/open. Then direct decisions per second: the decision core alone in this
process, and gRPC Check round trips against the workers.

    .venv/bin/python bench/authz.py [--workers 2] [--duration 5] [--connections 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
sys.path.insert(0, str(SRC))

from waypost.demo import find_envoy  # noqa: E402
from waypost.xds.bootstrap import build_bootstrap  # noqa: E402

API_KEY = "bench-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def policy(port: int, backend_port: int, fast_port: int = 0) -> str:
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    return f"""
kind: Gateway
name: bench
port: {port}
address: 127.0.0.1
---
kind: Service
name: echo
endpoints: ["127.0.0.1:{backend_port}"]
---
kind: Route
name: open
gateway: bench
match: {{prefix: /open}}
backend: echo
---
kind: Route
name: keyed
gateway: bench
match: {{prefix: /keyed}}
backend: echo
auth: keys
---
kind: Gateway
name: fast
port: {fast_port or port + 1}
address: 127.0.0.1
auth_service: http
---
kind: Route
name: fast-keyed
gateway: fast
match: {{prefix: /keyed}}
backend: echo
auth: keys
---
kind: AuthPolicy
name: keys
identity: [{{api_key: {{header: x-api-key}}}}]
---
kind: Consumer
name: bench
plan: gold
api_keys: ["sha256:{digest}"]
"""


def upstream_bootstrap(port: int) -> dict[str, object]:
    """A second Envoy answering 200 itself: an upstream fast enough not to be the bottleneck."""
    route = {"match": {"prefix": "/"}, "direct_response": {"status": 200, "body": {"inline_string": "ok"}}}
    hcm = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
        ".HttpConnectionManager",
        "stat_prefix": "upstream",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                },
            }
        ],
    }
    listener = {
        "name": "upstream",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    return {"static_resources": {"listeners": [listener]}}


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open (in {timeout}s)")


def wrk(url: str, duration: int, connections: int, headers: dict[str, str]) -> dict[str, float]:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url]
    for name, value in headers.items():
        argv += ["-H", f"{name}: {value}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "rps": rps,
        "requests": float(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),  # type: ignore[union-attr]
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its live descendants so far (Linux /proc)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += cpu_seconds(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def direct_core(seconds: float = 2.0) -> float:
    """Decisions/s of the core alone (one core, logging to /dev/null as in production JSON)."""
    from waypost.filters.authz.core import AuthRequest, AuthzCore
    from waypost.log import configure_logging
    from waypost.policies.loader import load_policies

    return (
        0.0 if seconds <= 0 else _loop_core(AuthzCore, AuthRequest, configure_logging, load_policies, seconds)
    )


def _loop_core(core_cls, request_cls, configure_logging, load_policies, seconds):  # type: ignore[no-untyped-def]
    configure_logging("info", json=True)
    devnull = open(os.devnull, "w")  # noqa: SIM115
    stderr, sys.stderr = sys.stderr, devnull
    try:
        import structlog

        structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=devnull))
        core = core_cls()
        core.apply(load_policies(POLICY_DIR))
        request = request_cls(
            route="keyed", policies=("keys",), method="GET", path="/keyed/1", headers={"x-api-key": API_KEY}
        )
        count = 0
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            for _ in range(1000):
                core.decide(request)
            count += 1000
        return count / seconds
    finally:
        sys.stderr = stderr


async def direct_grpc(port: int, seconds: float = 2.0, concurrency: int = 32) -> float:
    """gRPC Check round trips/s against the decision service (all its workers)."""
    import grpc
    from envoy.service.auth.v3 import external_auth_pb2

    check = external_auth_pb2.CheckRequest()
    http = check.attributes.request.http
    http.method, http.path = "GET", "/keyed/1"
    http.headers["x-api-key"] = API_KEY
    check.attributes.context_extensions.update({"route": "keyed", "policies": "keys"})
    body = check.SerializeToString()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/envoy.service.auth.v3.Authorization/Check")
        await call(body)
        count = 0
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal count
            while time.perf_counter() < deadline:
                await call(body)
                count += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / seconds


POLICY_DIR = Path()


def main() -> int:
    global POLICY_DIR
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--authz-grpcio",
        action="store_true",
        help="serve Check with grpcio's server (the lean one by default)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: make bench-deps", file=sys.stderr)
        return 2

    load_before = f"{os.getloadavg()[0]:.1f}"
    work = Path(tempfile.mkdtemp(prefix="waypost-bench-authz-"))
    POLICY_DIR = work / "policies"
    POLICY_DIR.mkdir()
    gateway_port, fast_port, backend_port, xds_port, admin_port, authz_port, http_port = (
        free_port() for _ in range(7)
    )
    (POLICY_DIR / "policy.yaml").write_text(policy(gateway_port, backend_port, fast_port))
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    quiet = {"stdout": subprocess.DEVNULL, "stderr": open(work / "log.txt", "ab")}  # noqa: SIM115
    procs: list[subprocess.Popen[bytes]] = []
    try:
        (work / "upstream.yaml").write_text(yaml.safe_dump(upstream_bootstrap(backend_port)))
        procs.append(
            subprocess.Popen(
                [
                    str(find_envoy()),
                    "-c",
                    str(work / "upstream.yaml"),
                    "--concurrency",
                    "1",
                    "--use-dynamic-base-id",
                    "-l",
                    "error",
                ],
                **quiet,
            )
        )
        waypost = [sys.executable, "-m", "waypost"]
        procs.append(
            subprocess.Popen(
                [
                    *waypost,
                    "serve",
                    "--policies",
                    str(POLICY_DIR),
                    "--host",
                    "127.0.0.1",
                    "--xds-port",
                    str(xds_port),
                    "--admin-port",
                    str(admin_port),
                    # The standalone decision service below, named once: Envoy learns it over EDS.
                    "--authz-address",
                    f"127.0.0.1:{authz_port}",
                    "--authz-http-address",
                    f"127.0.0.1:{http_port}",
                    "--no-watch",
                ],
                env=env,
                **quiet,
            )
        )
        procs.append(
            subprocess.Popen(
                [
                    *waypost,
                    "authz",
                    "--policies",
                    str(POLICY_DIR),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(authz_port),
                    "--http-port",
                    str(http_port),
                    "--workers",
                    str(args.workers),
                    "--no-watch",
                    "--log-format",
                    "json",
                    *(["--authz-grpcio"] if args.authz_grpcio else []),
                ],
                env=env,
                **quiet,
            )
        )
        bootstrap = build_bootstrap(
            node_id="bench",
            node_cluster="bench",
            xds_host="127.0.0.1",
            xds_port=xds_port,
            admin_port=0,
        )
        (work / "envoy.yaml").write_text(yaml.safe_dump(bootstrap))
        for port in (backend_port, xds_port, authz_port, http_port):
            wait_port(port)
        time.sleep(0.5)  # every worker bound
        procs.append(
            subprocess.Popen(
                [
                    str(find_envoy()),
                    "-c",
                    str(work / "envoy.yaml"),
                    "--concurrency",
                    "1",
                    "--use-dynamic-base-id",
                    "-l",
                    "error",
                ],
                **quiet,
            )
        )
        wait_port(gateway_port)
        wait_port(fast_port)
        base = f"http://127.0.0.1:{gateway_port}"
        fast = f"http://127.0.0.1:{fast_port}"
        wrk(f"{base}/open/1", 1, args.connections, {})  # warm-up
        wrk(f"{base}/keyed/1", 1, args.connections, {"x-api-key": API_KEY})
        wrk(f"{fast}/keyed/1", 1, args.connections, {"x-api-key": API_KEY})
        best: dict[str, dict[str, float]] = {}
        # CPU per request of the gateway Envoy and of the decision service (all rounds): what
        # each hop costs, which the machine's other load moves much less than req/s.
        cpu: dict[str, list[float]] = {}
        gateway_pid, authz_pid = procs[3].pid, procs[2].pid
        for _ in range(args.rounds):
            for name, url, headers in (
                ("no auth", f"{base}/open/1", {}),
                ("authz grpc", f"{base}/keyed/1", {"x-api-key": API_KEY}),
                ("authz http", f"{fast}/keyed/1", {"x-api-key": API_KEY}),
            ):
                gateway0, authz0 = cpu_seconds(gateway_pid), cpu_seconds(authz_pid)
                result = wrk(url, args.duration, args.connections, headers)
                totals = cpu.setdefault(name, [0.0, 0.0, 0.0])
                totals[0] += cpu_seconds(gateway_pid) - gateway0
                totals[1] += cpu_seconds(authz_pid) - authz0
                totals[2] += result["requests"]
                if name not in best or result["rps"] > best[name]["rps"]:
                    best[name] = result
        direct_http = wrk(
            f"http://127.0.0.1:{http_port}/_waypost/keyed/keyed/1", args.duration, 16, {"x-api-key": API_KEY}
        )["rps"]
        grpc_rate = asyncio.run(direct_grpc(authz_port))
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    core_rate = direct_core()
    if os.environ.get("KEEP") is None:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"Envoy --concurrency 1, wrk -t1 -c{args.connections} -d{args.duration}s, best of {args.rounds}; "
        f"waypost authz --workers {args.workers} ({'grpcio' if args.authz_grpcio else 'lean'} gRPC server); "
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'':12} {'req/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} "
        f"{'Envoy us/req':>13} {'authz us/req':>13}"
    )
    for name, result in best.items():
        gateway_cpu, authz_cpu, requests = cpu[name]
        print(
            f"{name:12} {result['rps']:>10.0f} {result['p50_ms']:>8.2f} {result['p99_ms']:>8.2f} "
            f"{result['non2xx']:>8.0f} {gateway_cpu / requests * 1e6:>13.1f} "
            f"{authz_cpu / requests * 1e6:>13.1f}"
        )
    print(f"load average before/after: {load_before} / {os.getloadavg()[0]:.1f}")
    for name in ("authz grpc", "authz http"):
        print(f"ratio {name} / no auth: {best[name]['rps'] / best['no auth']['rps']:.2f}")
    print(
        f"direct: decision core {core_rate:,.0f} decisions/s (one core); "
        f"over {args.workers} worker(s): HTTP endpoint {direct_http:,.0f}/s (wrk -c16), "
        f"gRPC Check {grpc_rate:,.0f}/s (Python grpc.aio client, 32 in flight)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
