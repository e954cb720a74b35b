"""Benchmark: call analytics ingestion per server CPU second, Envoy throughput with the access-log
stream on vs off, and the anomaly rule's false-positive rate on steady synthetic traffic.

1. Ingest: ``waypost serve --analytics-port`` receives access-log batches (100 entries each, three
   consumers over two routes, mixed statuses and latencies, as Envoy sends them) on 2 gRPC
   streams; entries counted by the server (``waypost_analytics_entries_total``) per second of the
   server's own CPU (utime + stime from /proc), so the load generator's CPU does not count.
   Goal: at least 20,000.
2. Envoy (``--concurrency 1``, ``wrk -t1 -c32``) on one route whose Gateway has analytics on,
   then off (the policy file rewritten, waypost pushes the listener), alternating, same Envoy,
   same upstream (a second Envoy answering 200 itself). Goal: on/off at least 0.9. Envoy's
   ``logs_written`` / ``logs_dropped`` and waypost's received entries are reported too.
3. ``--anomalies``: the anomaly rule over steady Poisson traffic (500 consumers, rates from 0.1
   to 200 requests/s, 1% errors, 2% denials) for 6 simulated hours: windows flagged / windows.

    .venv/bin/python bench/analytics.py [--seconds 5] [--rounds 2] [--skip-envoy] [--anomalies]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import re
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import yaml
from authz import upstream_bootstrap, wait_port
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import struct_pb2
from prometheus_client.parser import text_string_to_metric_families
from ratelimit import cpu_seconds, free_port, spawn, wrk

from waypost.analytics.anomaly import WINDOW, AnomalyDetector, WindowCounts
from waypost.demo import find_envoy
from waypost.xds.bootstrap import build_bootstrap

METHOD = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
BATCH = 100


def batch(rng: random.Random, first: bool) -> bytes:
    message = als_pb2.StreamAccessLogsMessage()
    if first:
        message.identifier.log_name = "bench"
        message.identifier.node.id = "bench-node"
    for _ in range(BATCH):
        entry = message.http_logs.log_entry.add()
        common = entry.common_properties
        common.route_name = rng.choice(("orders", "billing"))
        common.duration.FromMicroseconds(int(rng.lognormvariate(8, 0.6)))
        common.time_to_first_upstream_tx_byte.FromMicroseconds(200)
        common.time_to_last_upstream_rx_byte.FromMicroseconds(200 + int(rng.lognormvariate(7.5, 0.6)))
        metadata = struct_pb2.Struct()
        metadata.update({"consumer": rng.choice(("acme", "globex", "initech")), "plan": "gold"})
        common.metadata.filter_metadata["envoy.filters.http.ext_authz"].CopyFrom(metadata)
        entry.request.request_method = 1
        entry.request.request_headers_bytes = 180
        entry.response.response_code.value = rng.choices((200, 401, 429, 503), (90, 4, 4, 2))[0]
        entry.response.response_headers_bytes = 120
        entry.response.response_body_bytes = 512
    return message.SerializeToString()


async def drive(port: int, seconds: float, streams: int = 2) -> int:
    rng = random.Random(1)
    first, rest = batch(rng, True), [batch(rng, False) for _ in range(20)]
    sent = 0
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_unary(METHOD)

        async def messages() -> object:
            nonlocal sent
            yield first
            sent += BATCH
            i = 0
            while time.monotonic() < stop:
                yield rest[i % len(rest)]
                sent += BATCH
                i += 1
                if i % 20 == 0:
                    await asyncio.sleep(0)

        await asyncio.gather(*(call(messages()) for _ in range(streams)))
    return sent


def metric(admin: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5).read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def ingest(work: Path, seconds: float) -> tuple[float, int, int]:
    (work / "ingest-policies").mkdir()
    gateway = "kind: Gateway\nname: bench\nport: 1\naddress: 127.0.0.1\n"
    (work / "ingest-policies" / "p.yaml").write_text(gateway)
    port, admin, xds = free_port(), free_port(), free_port()
    argv = [sys.executable, "-m", "waypost", "serve", "--policies", str(work / "ingest-policies")]
    argv += ["--xds-port", str(xds), "--admin-port", str(admin), "--host", "127.0.0.1", "--no-watch"]
    argv += ["--analytics-port", str(port), "--data-dir", str(work / "ingest-data"), "--log-level", "warning"]
    proc = spawn(argv, work / "ingest.log")
    try:
        wait_port(port)
        wait_port(admin)
        asyncio.run(drive(port, 1.0))  # warm up
        time.sleep(1.5)
        before, cpu0 = metric(admin, "waypost_analytics_entries_total"), cpu_seconds(proc.pid)
        sent = asyncio.run(drive(port, seconds))
        time.sleep(1.5)  # the last flush and write
        received = metric(admin, "waypost_analytics_entries_total") - before
        cpu = cpu_seconds(proc.pid) - cpu0
    finally:
        proc.terminate()
        proc.wait(10)
    return received / cpu, int(received), sent


def policy(gateway: int, upstream: int, *, analytics: bool) -> str:
    return f"""
kind: Gateway
name: bench
port: {gateway}
address: 127.0.0.1
analytics: {{enabled: {str(analytics).lower()}}}
---
kind: Service
name: upstream
endpoints: ["127.0.0.1:{upstream}"]
---
kind: Route
name: orders
gateway: bench
match: {{prefix: /}}
backend: upstream
"""


def envoy_stat(admin_file: Path, name: str) -> int:
    address = admin_file.read_text().strip()
    text = urllib.request.urlopen(f"http://{address}/stats?filter=^{re.escape(name)}$", timeout=5).read()
    match = re.search(rf"{re.escape(name)}: (\d+)", text.decode())
    return int(match.group(1)) if match else 0


def envoy_ratio(work: Path, seconds: float, rounds: int) -> dict[str, float]:
    gateway, upstream, xds, admin, collector = (free_port() for _ in range(5))
    policies = work / "envoy-policies"
    policies.mkdir()
    policy_file = policies / "p.yaml"
    policy_file.write_text(policy(gateway, upstream, analytics=True))
    (work / "upstream.yaml").write_text(yaml.safe_dump(upstream_bootstrap(upstream)))
    bootstrap = build_bootstrap(
        node_id="bench", node_cluster="edge", xds_host="127.0.0.1", xds_port=xds, admin_port=0
    )
    (work / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap))
    envoy = str(find_envoy())
    admin_file = work / "envoy-admin.txt"
    envoy_flags = ["--concurrency", "1", "--use-dynamic-base-id", "-l", "error"]
    serve = [sys.executable, "-m", "waypost", "serve", "--policies", str(policies), "--xds-port", str(xds)]
    serve += ["--admin-port", str(admin), "--host", "127.0.0.1", "--analytics-port", str(collector)]
    serve += ["--data-dir", str(work / "envoy-data"), "--log-level", "warning"]
    procs = [
        spawn([envoy, "-c", str(work / "upstream.yaml"), *envoy_flags], work / "up.log"),
        spawn(serve, work / "waypost.log"),
    ]
    try:
        wait_port(xds)
        procs.append(
            spawn(
                [
                    envoy,
                    "-c",
                    str(work / "bootstrap.yaml"),
                    *envoy_flags,
                    "--admin-address-path",
                    str(admin_file),
                ],
                work / "envoy.log",
            )
        )
        wait_port(gateway)
        wait_port(upstream)
        time.sleep(0.5)

        def switch(on: bool) -> None:
            before = envoy_stat(admin_file, "listener_manager.lds.update_success")
            policy_file.write_text(policy(gateway, upstream, analytics=on))
            deadline = time.monotonic() + 20
            while envoy_stat(admin_file, "listener_manager.lds.update_success") == before:
                if time.monotonic() > deadline:
                    raise TimeoutError("the listener update never reached Envoy")
                time.sleep(0.1)
            time.sleep(1.0)  # the old listener drains; the logger's stream opens on first use

        wrk(gateway, "/", 1)
        on, off = [], []
        written0 = envoy_stat(admin_file, "access_logs.grpc_access_log.logs_written")
        dropped0 = envoy_stat(admin_file, "access_logs.grpc_access_log.logs_dropped")
        received0 = metric(admin, "waypost_analytics_entries_total")
        state = True
        for i in range(rounds):
            # Alternate which state goes first, and warm each state up after its listener update,
            # so neither side always runs right after a push.
            for want in (True, False) if i % 2 == 0 else (False, True):
                if want != state:
                    switch(want)
                    state = want
                wrk(gateway, "/", 1)
                (on if want else off).append(wrk(gateway, "/", seconds))
        time.sleep(2)
        return {
            "on": statistics.median(on),
            "off": statistics.median(off),
            "written": envoy_stat(admin_file, "access_logs.grpc_access_log.logs_written") - written0,
            "dropped": envoy_stat(admin_file, "access_logs.grpc_access_log.logs_dropped") - dropped0,
            "received": metric(admin, "waypost_analytics_entries_total") - received0,
        }
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(10)


def poisson(rng: random.Random, mean: float) -> int:
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(1 for _ in range(n) if rng.random() < p) if n < 2000 else poisson(rng, n * p)


def anomalies(consumers: int = 500, hours: float = 6.0) -> tuple[int, int]:
    """(anomalies raised, consumer-windows evaluated) on steady traffic."""
    rng = random.Random(42)
    rates = [10 ** rng.uniform(-1, math.log10(200)) for _ in range(consumers)]
    detector = AnomalyDetector()
    start = 1_800_000_000
    for window in range(int(hours * 3600 / WINDOW)):
        second = start + window * WINDOW
        counts = {}
        for i, rate in enumerate(rates):
            n = poisson(rng, rate * WINDOW)
            if n:
                counts[f"c{i}"] = WindowCounts(n, binomial(rng, n, 0.01), binomial(rng, n, 0.02))
        # One observe per window: the detector sums seconds, so a whole window at once is the same.
        detector.observe(second, counts)
    return sum(detector.raised_total.values()), detector.windows_evaluated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--skip-envoy", action="store_true")
    parser.add_argument("--anomalies", action="store_true")
    args = parser.parse_args()
    if args.anomalies:
        raised, windows = anomalies()
        print(
            f"anomaly rule on steady traffic: {raised} raised over {windows:,} consumer-windows "
            f"({raised / windows:.2e} per window)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        per_cpu, received, sent = ingest(work, args.seconds)
        print(f"ingest: {per_cpu:,.0f} entries per server CPU-second ({received:,} of {sent:,} received)")
        if not args.skip_envoy:
            r = envoy_ratio(work, args.seconds, args.rounds)
            ratio = r["on"] / r["off"]
            print(f"envoy: analytics on {r['on']:,.0f} req/s, off {r['off']:,.0f} req/s, on/off {ratio:.3f}")
            print(
                f"  Envoy logs written {r['written']:,.0f}, dropped {r['dropped']:,.0f}; "
                f"waypost received {r['received']:,.0f}"
            )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
