"""Benchmark: xDS fan-out. How fast does one policy change reach N connected ADS streams, and
how much server memory does each stream cost?

Three kinds of process (this one file plays each role):

* the server: a :class:`~waypost.xds.cache.SnapshotCache` and the real
  :class:`~waypost.xds.ads.AdsServer` on uvloop, exactly as ``waypost serve`` wires them, with a
  policy of 50 Services and 100 Routes on one Gateway; driven over stdin;
* clients: simulated Envoys, ``grpc.aio`` SotW ADS streams (one TCP connection each, as each Envoy
  has its own) that subscribe to CDS, EDS, LDS and RDS and ACK every response;
* the driver (default): starts the server, connects N streams over several client processes,
  reads the server's RSS before and after (memory per stream = delta / N), publishes a new
  policy version (a changed endpoint and a new route: EDS and RDS change) and reports the time
  from the publish to the last stream ACKing every new type version.

    .venv/bin/python bench/fanout.py [--streams 100 1000 5000] [--clients-per-process 1250]
        [--transport h2grpc grpcio] [--before-src /path/to/older/src]

The server runs ADS on waypost's lean gRPC server (``--transport h2grpc``, what ``waypost serve``
uses on plaintext xDS) or on grpcio's (``grpcio``, used on TLS xDS). ``--before-src`` runs, per
stream count, first a server from an older checkout's ``src/`` (on grpcio), then this one: a
before/after in one run.

All processes share the machine's cores (2 here), so the convergence figure includes the
clients' own CPU time: an upper bound for the server's part. The server's CPU per stream and the
clients' total CPU are reported beside it.

Profiling aids: ``FANOUT_HISTOGRAM=1`` prints (stderr) which Python object types grew by how many
bytes between RSS readings; ``FANOUT_GRPC_OPTIONS='[["grpc.http2.bdp_probe", 0]]'`` adds server
channel options; ``--streams-per-channel 1000`` puts many streams on one connection, separating
per-connection from per-stream cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

SERVICES = 50
ROUTES = 100
TYPES = ("cds", "eds", "lds", "rds")


# --- server --------------------------------------------------------------------------------------


def _policy(version: int) -> Any:
    from waypost.policies.model import Gateway, PolicySet, Route, Service

    services = {
        f"svc{i}": Service(name=f"svc{i}", endpoints=[f"10.0.{i}.1:{8080 + (version if i == 0 else 0)}"])
        for i in range(SERVICES)
    }
    routes = {
        f"r{i}": Route(
            name=f"r{i}", gateway="public", match={"prefix": f"/r{i}"}, backend=f"svc{i % SERVICES}"
        )
        for i in range(ROUTES + version)
    }
    gateways = {"public": Gateway(name="public", port=8080)}
    return PolicySet(version=f"v{version}", gateways=gateways, services=services, routes=routes)


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def _server(transport: str) -> None:
    import grpc

    from waypost.log import configure_logging
    from waypost.xds.ads import AdsServer
    from waypost.xds.cache import NodeInfo, SnapshotCache

    configure_logging("warning")  # to stderr; stdout carries the driver protocol
    from waypost.xds.compiler import compile_policy
    from waypost.xds.types import TypeUrl

    histogram: dict[str, int] = {}
    cache = SnapshotCache()
    version = 1

    def targets() -> dict[str, str]:
        snapshot = cache.snapshot_for(NodeInfo(id="probe", cluster="edge"))
        assert snapshot is not None
        return {t.short: snapshot.version(t) for t in TypeUrl if t.short in TYPES}

    cache.publish(compile_policy(_policy(version)))
    ads = AdsServer(cache)
    if transport == "h2grpc":  # `waypost serve` on plaintext xDS
        from waypost.h2grpc import start_grpc_server
        from waypost.xds.ads import XDS_LIMITS

        lean = await start_grpc_server(ads.services(), "127.0.0.1", 0, limits=XDS_LIMITS)
        port, stop = lean.port, lean.stop
    else:
        server = grpc.aio.server(  # the options `waypost serve` uses on TLS xDS
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.max_pings_without_data", 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                *json.loads(os.environ.get("FANOUT_GRPC_OPTIONS", "[]")),
            ]
        )
        ads.add_to(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()

        async def stop() -> None:
            await server.stop(grace=None)

    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )

    def say(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    snapshot = cache.snapshot_for(NodeInfo(id="probe", cluster="edge"))
    assert snapshot is not None
    say(
        {
            "port": port,
            "targets": targets(),
            "eds": sorted(snapshot.resources[TypeUrl.ENDPOINT]),
            "rds": sorted(snapshot.resources[TypeUrl.ROUTE]),
        }
    )
    while line := (await reader.readline()).decode().strip():
        if line == "rss":
            import gc

            gc.collect()
            report: dict[str, Any] = {
                "rss_kb": _rss_kb(),
                "streams": len(ads.registry.streams()),
            }
            if os.environ.get("FANOUT_HISTOGRAM"):  # which Python objects each stream adds
                now: dict[str, int] = {}
                for obj in gc.get_objects():
                    name = type(obj).__qualname__
                    now[name] = now.get(name, 0) + sys.getsizeof(obj)
                grown = sorted(((v - histogram.get(k, 0), k) for k, v in now.items()), reverse=True)[:20]
                sys.stderr.write(f"{grown}\n")
                histogram = now
            say(report)
        elif line == "publish":
            version += 1
            compiled = compile_policy(_policy(version))
            prepared = cache.prepare(compiled)  # off the clock: waypost does this off the loop
            cpu = time.process_time()  # the change's CPU starts here, not with compiling it
            at = time.time()
            cache.commit(prepared)
            say({"published_at": at, "cpu_at_commit": cpu, "targets": targets()})
    await stop()


# --- client --------------------------------------------------------------------------------------


async def _client(
    port: int, count: int, first: int, eds: list[str], rds: list[str], per_channel: int
) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    from waypost.xds.types import TypeUrl

    short = {t.value: t.short for t in TypeUrl}
    names = {"eds": eds, "rds": rds}
    # acked[(stream, type)] = {version: time ACK sent}
    acked: list[dict[str, dict[str, float]]] = [{t: {} for t in TYPES} for _ in range(count)]

    channels: dict[int, grpc.aio.Channel] = {}

    async def stream_once(index: int) -> None:
        channel = channels.get(index // per_channel)
        if channel is None:
            channel = channels[index // per_channel] = grpc.aio.insecure_channel(
                f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
        queue: asyncio.Queue[discovery_pb2.DiscoveryRequest] = asyncio.Queue()
        node = base_pb2.Node(id=f"bench-{first + index}", cluster="edge")
        for i, type_url in enumerate((TypeUrl.CLUSTER, TypeUrl.ENDPOINT, TypeUrl.LISTENER, TypeUrl.ROUTE)):
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url, resource_names=names.get(type_url.short, [])
            )
            if i == 0:
                request.node.CopyFrom(node)
            queue.put_nowait(request)

        async def requests() -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
            while True:
                yield await queue.get()

        call = channel.stream_stream(
            "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )(requests())
        async for response in call:
            kind = short[response.type_url]
            queue.put_nowait(
                discovery_pb2.DiscoveryRequest(
                    type_url=response.type_url,
                    version_info=response.version_info,
                    response_nonce=response.nonce,
                    resource_names=names.get(kind, []),
                )
            )
            acked[index][kind][response.version_info] = time.time()

    failures = 0

    async def stream(index: int) -> None:
        # Like Envoy: a stream that fails is re-opened after a back-off, and the failure counted.
        nonlocal failures
        while True:
            try:
                await stream_once(index)
            except grpc.aio.AioRpcError as exc:
                failures += 1
                if failures <= 3:
                    sys.stderr.write(f"stream {first + index} failed: {exc.code()} {exc.details()}\n")
                await asyncio.sleep(0.5)

    def reached(targets: dict[str, str]) -> float | None:
        """When every stream had acked every target version (max over streams), or None yet."""
        latest = 0.0
        for per_type in acked:
            for kind, version in targets.items():
                at = per_type[kind].get(version)
                if at is None:
                    return None
                latest = max(latest, at)
        return latest

    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(stream(i)))
        if i % 50 == 49:
            await asyncio.sleep(0.01)  # a connection storm is not what is measured here
    reader = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    while line := (await reader.readline()).decode().strip():
        targets = json.loads(line)
        while (at := reached(targets)) is None:
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            await asyncio.sleep(0.02)
        sys.stdout.write(json.dumps({"reached": at, "stream_failures": failures}) + "\n")
        sys.stdout.flush()
    for task in tasks:
        task.cancel()


# --- driver --------------------------------------------------------------------------------------


def _spawn(*args: str, src: str | None = None) -> subprocess.Popen[str]:
    env = dict(os.environ)
    src = src or str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, __file__, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )


def _ask(process: subprocess.Popen[str], line: str | None) -> dict[str, Any]:
    assert process.stdin is not None and process.stdout is not None
    if line is not None:
        process.stdin.write(line + "\n")
        process.stdin.flush()
    answer = process.stdout.readline()
    if not answer:
        raise RuntimeError(f"process {process.args} ended (code {process.wait()})")
    result: dict[str, Any] = json.loads(answer)
    return result


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(
    streams: int,
    per_process: int,
    per_channel: int = 1,
    server_src: str | None = None,
    transport: str = "h2grpc",
) -> dict[str, Any]:
    server = _spawn("--role", "server", "--transport", transport, src=server_src)
    clients: list[subprocess.Popen[str]] = []
    try:
        hello = _ask(server, None)
        baseline = _ask(server, "rss")["rss_kb"]
        cpu_start = _cpu_s(server.pid)
        started = time.time()
        first = 0
        while first < streams:
            count = min(per_process, streams - first)
            clients.append(
                _spawn(
                    "--role",
                    "client",
                    "--port",
                    str(hello["port"]),
                    "--count",
                    str(count),
                    "--first",
                    str(first),
                    "--names",
                    json.dumps({"eds": hello["eds"], "rds": hello["rds"]}),
                    "--streams-per-channel",
                    str(per_channel),
                )
            )
            first += count
        # Initial sync: every stream acks version 1 of every type.
        synced = [_ask(c, json.dumps(hello["targets"])) for c in clients]
        initial = max(answer["reached"] for answer in synced) - started
        cpu_synced = _cpu_s(server.pid)
        loaded = _ask(server, "rss")  # collects garbage first: not counted in either CPU figure
        assert loaded["streams"] == streams, loaded
        clients_synced = sum(_cpu_s(c.pid) for c in clients)
        published = _ask(server, "publish")
        converged = [_ask(c, json.dumps(published["targets"])) for c in clients]
        reached = max(answer["reached"] for answer in converged)
        cpu_converged = _cpu_s(server.pid)
        clients_converged = sum(_cpu_s(c.pid) for c in clients)
        return {
            "streams": streams,
            "server": f"{'before' if server_src else 'this checkout'}, {transport}",
            "client_processes": len(clients),
            "streams_per_connection": per_channel,
            "initial_sync_s": round(initial, 2),
            "converge_s": round(reached - published["published_at"], 3),
            "rss_baseline_mb": round(baseline / 1024, 1),
            "rss_loaded_mb": round(loaded["rss_kb"] / 1024, 1),
            "kb_per_stream": round((loaded["rss_kb"] - baseline) / streams, 1),
            # The server's own CPU (utime + stime), per stream: what grows with N on its side.
            "server_cpu_ms_per_stream_sync": round((cpu_synced - cpu_start) * 1000 / streams, 2),
            "server_cpu_ms_per_stream_change": round(
                (cpu_converged - published["cpu_at_commit"]) * 1000 / streams, 3
            ),
            # The simulated Envoys' CPU (all client processes), on the same two cores.
            "clients_cpu_s_sync": round(clients_synced, 1),
            "clients_cpu_s_change": round(clients_converged - clients_synced, 2),
            # Streams that failed and were re-opened: while connecting, and during the change.
            "stream_failures_initial": sum(answer["stream_failures"] for answer in synced),
            "stream_failures_change": sum(a["stream_failures"] for a in converged)
            - sum(a["stream_failures"] for a in synced),
        }
    finally:
        for process in [*clients, server]:
            if process.stdin is not None:
                process.stdin.close()
        for process in [*clients, server]:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("driver", "server", "client"), default="driver")
    parser.add_argument("--streams", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--clients-per-process", type=int, default=1250)
    parser.add_argument("--port", type=int)
    parser.add_argument("--server-src", help="run the server from this src/ directory (an older checkout)")
    parser.add_argument(
        "--before-src",
        help="compare: per stream count, first a server from this src/ directory (grpcio), then this one",
    )
    parser.add_argument(
        "--transport",
        nargs="+",
        choices=("h2grpc", "grpcio"),
        default=["h2grpc"],
        help="the server's gRPC stack: waypost's lean one (plaintext xDS) or grpcio's (TLS xDS)",
    )
    parser.add_argument("--count", type=int)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--names")
    parser.add_argument(
        "--streams-per-channel", type=int, default=1, help="1: a connection per stream, as Envoys have"
    )
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        uvloop = None  # type: ignore[assignment]
    runner = uvloop.run if uvloop is not None else asyncio.run
    if args.role == "server":
        runner(_server(args.transport[0]))
        return
    if args.role == "client":
        names = json.loads(args.names)
        runner(
            _client(args.port, args.count, args.first, names["eds"], names["rds"], args.streams_per_channel)
        )
        return
    for streams in args.streams:
        variants = [(args.server_src, transport) for transport in args.transport]
        if args.before_src:
            variants.insert(0, (args.before_src, "grpcio"))
        for src, transport in variants:
            result = run(streams, args.clients_per_process, args.streams_per_channel, src, transport)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
