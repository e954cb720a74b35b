"""Benchmark: the decision RPCs on three Python gRPC servers, same handlers, same client.

Envoy calls ``envoy.service.auth.v3.Authorization/Check`` (ext_authz) and
``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`` (RLS) once per request. This
serves both, with the very handlers waypost registers (API-key Check against a loaded policy;
a rate limit that is never reached, in-process counters), on:

- ``lean``: waypost's own server (:mod:`waypost.h2grpc`, hand-framed HTTP/2 + ``hpack``),
- ``grpclib``: the pure-Python grpclib server (``h2`` state machine), raw-bytes codec,
- ``grpcio``: grpcio's aio server, generic raw-bytes handlers (what ``--*-grpcio`` runs),

each in its own process on uvloop, driven by one grpcio client (64 calls in flight over one
channel). The figure is calls per second of the *server's* CPU time (utime + stime from /proc):
the client shares the 2 cores, so wall-clock rates say less. Servers alternate, best of
``--rounds``.

    .venv/bin/python bench/grpc_servers.py [--seconds 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
from envoy.service.auth.v3 import external_auth_pb2

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))
sys.path.insert(0, str(BENCH))

from ratelimit import BENCH_KEY, cpu_seconds, free_port, policy_text, request_bytes, wait_port  # noqa: E402

CHECK = "/envoy.service.auth.v3.Authorization/Check"
RLS = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
IMPLEMENTATIONS = ("lean", "grpclib", "grpcio")


def check_bytes() -> list[bytes]:
    out = []
    for i in range(100):
        check = external_auth_pb2.CheckRequest()
        http = check.attributes.request.http
        http.method, http.path, http.host = "GET", f"/auth-limited/{i}", "bench"
        http.headers.update({"x-api-key": BENCH_KEY, "user-agent": "wrk", ":path": http.path})
        check.attributes.context_extensions.update({"route": "auth-limited", "policies": "bench-keys"})
        out.append(check.SerializeToString())
    return out


# --- the server side (a child process) ------------------------------------------------------------


def handlers(policies: Path) -> dict[str, Callable[[bytes], bytes | Awaitable[bytes]]]:
    from waypost.filters.authz.core import AuthzCore
    from waypost.filters.authz.grpc_service import AuthzGrpcService
    from waypost.filters.ratelimit.limiter import Limiter
    from waypost.filters.ratelimit.service import RateLimitService
    from waypost.filters.ratelimit.store import MemoryStore
    from waypost.log import configure_logging
    from waypost.policies.loader import load_policies

    configure_logging("info", json=True)  # as in production: one JSON line per decision
    policy = load_policies(policies)
    core = AuthzCore()
    core.apply(policy)
    limiter = Limiter(MemoryStore("fixed"))
    limiter.apply(policy)
    return {CHECK: AuthzGrpcService(core).check, RLS: RateLimitService(limiter).answer_bytes}


async def serve(impl: str, port: int, policies: Path) -> None:
    table = handlers(policies)
    running: object  # held until the process ends: a collected grpcio server stops serving
    if impl == "lean":
        from waypost.h2grpc import Service, UnaryMethod, start_grpc_server

        services = [
            Service(path.split("/")[1], {path.split("/")[2]: UnaryMethod(handler)})
            for path, handler in table.items()
        ]
        running = await start_grpc_server(services, "127.0.0.1", port)
    elif impl == "grpcio":
        from waypost.h2grpc import Service, UnaryMethod, start_grpcio_server

        services = [
            Service(path.split("/")[1], {path.split("/")[2]: UnaryMethod(handler)})
            for path, handler in table.items()
        ]
        running = await start_grpcio_server(services, "127.0.0.1", port)
    else:
        running = await _serve_grpclib(table, port)
    await asyncio.Event().wait()
    print(running)


async def _serve_grpclib(table: dict[str, Callable[[bytes], bytes | Awaitable[bytes]]], port: int) -> object:
    from grpclib.const import Cardinality, Handler
    from grpclib.encoding.base import CodecBase
    from grpclib.server import Server, Stream

    class RawCodec(CodecBase):
        __content_subtype__ = "proto"

        def encode(self, message: bytes, message_type: object) -> bytes:
            return message

        def decode(self, data: bytes, message_type: object) -> bytes:
            return data

    def method(handler: Callable[[bytes], bytes | Awaitable[bytes]]) -> Callable[[Stream], Awaitable[None]]:
        async def call(stream: Stream) -> None:
            answer = handler(await stream.recv_message())
            await stream.send_message(await answer if inspect.isawaitable(answer) else answer)

        return call

    class Services:
        def __mapping__(self) -> dict[str, Handler]:
            return {
                path: Handler(method(handler), Cardinality.UNARY_UNARY, bytes, bytes)
                for path, handler in table.items()
            }

    server = Server([Services()], codec=RawCodec())
    await server.start("127.0.0.1", port)
    return server


# --- the driver ----------------------------------------------------------------------------------


async def drive(port: int, method: str, bodies: list[bytes], seconds: float, concurrency: int = 64) -> int:
    done = 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(method)
        await call(bodies[0])
        stop = time.monotonic() + seconds

        async def worker(offset: int) -> None:
            nonlocal done
            i = offset
            while time.monotonic() < stop:
                await call(bodies[i % len(bodies)])
                i += 1
                done += 1

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    return done


def measure(impl: str, policies: Path, work: Path, seconds: float) -> dict[str, tuple[float, float]]:
    """{method: (calls per server CPU-second, calls per wall second)}."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(BENCH.parent / "src"))
    argv = [sys.executable, __file__, "--serve", impl, "--port", str(port), "--policies", str(policies)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = {}
    try:
        wait_port(port, timeout=90)  # a loaded machine imports slowly
        for name, method, bodies in (
            ("Check", CHECK, check_bytes()),
            ("ShouldRateLimit", RLS, request_bytes()),
        ):
            asyncio.run(drive(port, method, bodies, 0.5))  # warm up
            cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            count = asyncio.run(drive(port, method, bodies, seconds))
            cpu, wall = cpu_seconds(proc.pid) - cpu0, time.perf_counter() - t0
            out[name] = (count / cpu, count / wall)
    finally:
        proc.terminate()
        proc.wait(10)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--policies", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve, args.port, args.policies))
        return 0
    work = Path(tempfile.mkdtemp(prefix="waypost-bench-grpc-"))
    policies = work / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(policy_text(free_port(), free_port()))
    load_before = os.getloadavg()[0]
    best: dict[tuple[str, str], tuple[float, float]] = {}
    for _ in range(args.rounds):
        for impl in IMPLEMENTATIONS:
            for method, figures in measure(impl, policies, work, args.seconds).items():
                if (impl, method) not in best or figures[0] > best[impl, method][0]:
                    best[impl, method] = figures
    print(
        f"best of {args.rounds} rounds of {args.seconds:g}s; {os.cpu_count()} cores; load average "
        f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    )
    print(f"{'server':10} {'method':16} {'calls/server CPU-s':>20} {'calls/s wall':>14} {'vs grpcio':>10}")
    for method in ("Check", "ShouldRateLimit"):
        for impl in IMPLEMENTATIONS:
            per_cpu, per_wall = best[impl, method]
            ratio = per_cpu / best["grpcio", method][0]
            print(f"{impl:10} {method:16} {per_cpu:>20,.0f} {per_wall:>14,.0f} {ratio:>9.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
