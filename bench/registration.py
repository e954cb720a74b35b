"""Benchmark: endpoint churn. How fast does a self-registered endpoint reach every Envoy?

Three processes (this file plays each role), all on loopback:

* the server: :class:`~waypost.xds.cache.SnapshotCache` and the real
  :class:`~waypost.xds.ads.AdsServer` on uvloop, as ``waypost serve`` wires them, with a policy
  of ``--services`` Services taking registrations (grace 0: a leave is a change too) and one
  Gateway routing to all of them, so every Envoy subscribes to every Service's endpoints;
* subscribers: ``--envoys`` simulated Envoys (SotW ADS streams subscribing to CDS and EDS, acking
  every response), recording when each address first appears in their EDS;
* registrants: ``--endpoints`` nodes, each an ADS stream whose node metadata says
  ``register: {service, address}``, kept at that count while ``--rate`` nodes a second leave and
  as many new ones join, for ``--seconds``.

Reported: from a join (its stream's first request) to the last subscriber seeing its address,
p50/p99/max; and the server's CPU seconds per registration change (joins + leaves).

    .venv/bin/python bench/registration.py [--services 100 --endpoints 1000 --rate 50 --seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


def _policy(services: int) -> Any:
    from waypost.policies.model import Gateway, NodeSelector, PolicySet, Registration, Route, Service

    registration = Registration(nodes=NodeSelector(cluster="app"), grace="0ms")  # type: ignore[arg-type]
    return PolicySet(
        version="bench",
        gateways={"edge": Gateway(name="edge", port=8080)},
        services={f"s{i}": Service(name=f"s{i}", registration=registration) for i in range(services)},
        routes={
            f"r{i}": Route(name=f"r{i}", gateway="edge", match={"prefix": f"/s{i}"}, backend=f"s{i}")  # type: ignore[arg-type]
            for i in range(services)
        },
    )


async def _server(services: int) -> None:
    import grpc

    from waypost.log import configure_logging
    from waypost.xds.ads import AdsServer
    from waypost.xds.cache import SnapshotCache
    from waypost.xds.compiler import compile_policy

    configure_logging("warning")
    cache = SnapshotCache()
    cache.publish(compile_policy(_policy(services)))
    server = grpc.aio.server()
    AdsServer(cache).add_to(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"port": port}), flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while line := (await reader.readline()).decode().strip():
        if line == "cpu":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(json.dumps({"cpu": usage.ru_utime + usage.ru_stime}), flush=True)
    await server.stop(grace=None)


def _stub(port: int, channel_count: int) -> Any:
    import grpc
    from envoy.service.discovery.v3 import discovery_pb2

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(channel_count)]
    return [
        c.stream_stream(
            ADS,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        for c in channels
    ]


async def _subscribers(port: int, envoys: int) -> None:
    from envoy.config.endpoint.v3 import endpoint_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from waypost.xds.types import TypeUrl

    seen: list[dict[str, float]] = [{} for _ in range(envoys)]
    calls = _stub(port, envoys)

    async def envoy(index: int) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        first = discovery_pb2.DiscoveryRequest(type_url=TypeUrl.CLUSTER)
        first.node.id, first.node.cluster = f"envoy-{index}", "edge"
        queue.put_nowait(first)
        queue.put_nowait(discovery_pb2.DiscoveryRequest(type_url=TypeUrl.ENDPOINT))

        async def requests() -> AsyncIterator[Any]:
            while True:
                yield await queue.get()

        eds_names: list[str] = []
        last: dict[bytes, None] = {}  # resources already read: SotW resends every one each time
        async for response in calls[index](requests()):
            if response.type_url == TypeUrl.CLUSTER:
                eds_names = sorted(_name(r) for r in response.resources)
            now = time.time()
            if response.type_url == TypeUrl.ENDPOINT:
                fresh = {packed.value: None for packed in response.resources}
                for value in fresh.keys() - last.keys():
                    assignment = endpoint_pb2.ClusterLoadAssignment.FromString(value)
                    for group in assignment.endpoints:
                        for lb in group.lb_endpoints:
                            address = f"{lb.endpoint.address.socket_address.address}"
                            seen[index].setdefault(address, now)
                last = fresh
            names = eds_names if response.type_url == TypeUrl.ENDPOINT else []
            queue.put_nowait(
                discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url,
                    version_info=response.version_info,
                    response_nonce=response.nonce,
                    resource_names=names,
                )
            )
            if response.type_url == TypeUrl.CLUSTER:
                queue.put_nowait(
                    discovery_pb2.DiscoveryRequest(type_url=TypeUrl.ENDPOINT, resource_names=names)
                )

    tasks = [asyncio.create_task(envoy(i)) for i in range(envoys)]
    print("{}", flush=True)
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    await reader.readline()  # "report"
    await asyncio.sleep(5.0)  # let the last joins arrive (a loaded machine lags)
    addresses = set().union(*seen)
    print(json.dumps({a: [s.get(a) for s in seen] for a in addresses}), flush=True)
    for task in tasks:
        task.cancel()


def _name(resource_any: Any) -> str:
    from envoy.config.cluster.v3 import cluster_pb2

    return str(cluster_pb2.Cluster.FromString(resource_any.value).name)


async def _registrants(port: int, services: int, endpoints: int, rate: int, seconds: float) -> None:
    from envoy.service.discovery.v3 import discovery_pb2
    from google.protobuf import struct_pb2

    from waypost.xds.types import TypeUrl

    calls = _stub(port, 20)
    joined: dict[str, float] = {}
    live: dict[str, asyncio.Task[None]] = {}
    counter = 0

    async def node(address: str, service: str) -> None:
        request = discovery_pb2.DiscoveryRequest(type_url=TypeUrl.CLUSTER)
        request.node.id, request.node.cluster = f"app-{address}", "app"
        request.node.metadata.fields["register"].struct_value.CopyFrom(
            struct_pb2.Struct(fields={"service": struct_pb2.Value(string_value=service),
                                      "address": struct_pb2.Value(string_value=f"{address}:80")})
        )  # fmt: skip

        async def requests() -> AsyncIterator[Any]:
            joined[address] = time.time()
            yield request
            await asyncio.Event().wait()

        async for _ in calls[hash(address) % len(calls)](requests()):
            pass

    def join() -> None:
        nonlocal counter
        counter += 1
        address = f"10.{counter // 65536 % 256}.{counter // 256 % 256}.{counter % 256}"
        live[address] = asyncio.create_task(node(address, f"s{counter % services}"))

    for _ in range(endpoints):
        join()
    await asyncio.sleep(3.0)  # the initial population, not measured
    measured_from = time.time()
    print(json.dumps({"start": measured_from}), flush=True)
    changes = 0
    deadline = measured_from + seconds
    while time.time() < deadline:
        tick = time.time()
        for _ in range(rate // 10 or 1):
            address = random.choice(list(live))
            live.pop(address).cancel()
            join()
            changes += 2
        await asyncio.sleep(max(0.0, 0.1 - (time.time() - tick)))
    print(
        json.dumps({"changes": changes, "joins": {a: t for a, t in joined.items() if t >= measured_from}}),
        flush=True,
    )
    await asyncio.sleep(2.0)


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH")])
    )
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def _read(process: subprocess.Popen[str], line: str | None = None) -> Any:
    assert process.stdin is not None and process.stdout is not None
    if line is not None:
        process.stdin.write(line + "\n")
        process.stdin.flush()
    answer = process.stdout.readline()
    if not answer:
        raise RuntimeError(f"{process.args} ended with {process.wait()}")
    return json.loads(answer)


def run(services: int, endpoints: int, rate: int, seconds: float, envoys: int) -> dict[str, Any]:
    server = _spawn("--role", "server", "--services", str(services))
    port = _read(server)["port"]
    subscribers = _spawn("--role", "subscribers", "--port", str(port), "--envoys", str(envoys))
    _read(subscribers)
    registrants = _spawn(
        *("--role", "registrants", "--port", str(port), "--services", str(services)),
        *("--endpoints", str(endpoints), "--rate", str(rate), "--seconds", str(seconds)),
    )
    try:
        _read(registrants)  # measured from here
        cpu_before = _read(server, "cpu")["cpu"]
        done = _read(registrants)
        cpu_after = _read(server, "cpu")["cpu"]
        seen = _read(subscribers, "report")
        latencies = []
        missing = 0
        for address, joined_at in done["joins"].items():
            times = seen.get(address)
            if times is None or any(t is None for t in times):
                missing += 1  # left again before every Envoy saw it, or never arrived
                continue
            latencies.append(max(times) - joined_at)
        latencies.sort()
        if not latencies:
            raise RuntimeError(f"no join reached every Envoy ({missing} joins measured)")

        def pct(p: float) -> float:
            return round(latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000, 1)

        return {
            "services": services, "endpoints": endpoints, "churn_per_s": rate, "envoys": envoys,
            "joins_measured": len(latencies), "joins_not_seen_by_all": missing,
            "join_to_all_envoys_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": pct(1.0)},
            "server_cpu_ms_per_change": round((cpu_after - cpu_before) * 1000 / max(done["changes"], 1), 2),
        }  # fmt: skip
    finally:
        for process in (registrants, subscribers, server):
            if process.stdin is not None:
                process.stdin.close()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", default="driver")
    parser.add_argument("--port", type=int)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=50, help="leaves (and as many joins) a second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--envoys", type=int, default=20)
    args = parser.parse_args()
    import uvloop

    if args.role == "server":
        uvloop.run(_server(args.services))
    elif args.role == "subscribers":
        uvloop.run(_subscribers(args.port, args.envoys))
    elif args.role == "registrants":
        uvloop.run(_registrants(args.port, args.services, args.endpoints, args.rate, args.seconds))
    else:
        print(json.dumps(run(args.services, args.endpoints, args.rate, args.seconds, args.envoys), indent=2))


if __name__ == "__main__":
    main()
