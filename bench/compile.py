"""Benchmark: load, compile and serialize a large policy directory.

Generates 1,000 Services and 5,000 Routes over 10 Gateways (YAML files in a temporary directory),
then times each stage of a reload as `waypost serve` runs it: load + validate, compile to Envoy
protobufs, and prepare (serialize every resource once, hash, cut node-group snapshots and check
their consistency). Peak memory is the process's maximum resident set size.

    .venv/bin/python bench/compile.py [--services 1000] [--routes 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

from waypost.policies.loader import load_policies
from waypost.xds.cache import SnapshotCache
from waypost.xds.compiler import compile_policy


def write_policies(directory: Path, services: int, routes: int, gateways: int = 10) -> None:
    with open(directory / "gateways.yaml", "w") as out:
        for g in range(gateways):
            out.write(
                f"---\nkind: Gateway\nname: gw{g}\nport: {10000 + g}\nnodes: {{cluster: edge{g % 3}}}\n"
            )
    with open(directory / "services.yaml", "w") as out:
        for s in range(services):
            out.write(
                f"---\nkind: Service\nname: svc{s}\nendpoints: ['10.{s // 250}.{s % 250}.1:8080', "
                f"'10.{s // 250}.{s % 250}.2:8080']\nconnect_timeout: 1s\n"
                "health_check: {path: /healthz, interval: 5s}\n"
                "circuit_breaker: {max_connections: 1024, max_requests: 1024}\n"
            )
    for r in range(routes):  # one file per Gateway: a policy file is at most 1 MiB
        with open(directory / f"routes-gw{r % gateways}.yaml", "a") as out:
            out.write(
                f"---\nkind: Route\nname: route{r}\ngateway: gw{r % gateways}\n"
                f"hosts: ['api{r % 7}.example.com']\n"
                f"match: {{prefix: /v1/r{r}, methods: [GET, POST]}}\n"
                f"backend: svc{r % services}\ntimeout: 5s\n"
                "retries: {attempts: 2, on: [5xx, reset]}\n"
                "request_headers: {add: {x-gateway: waypost}}\n"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--routes", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    # Wall clock, and this process's CPU time (steadier on a shared machine).
    stages = ("load", "compile", "prepare", "total")
    timings: dict[str, list[float]] = {key: [] for stage in stages for key in (stage, f"{stage} cpu")}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_policies(directory, args.services, args.routes)
        for _ in range(args.repeat):
            cache = SnapshotCache()
            t0, c0 = time.perf_counter(), time.process_time()
            policy = load_policies(directory)
            t1, c1 = time.perf_counter(), time.process_time()
            compiled = compile_policy(policy)
            t2, c2 = time.perf_counter(), time.process_time()
            prepared = cache.prepare(compiled)
            t3, c3 = time.perf_counter(), time.process_time()
            cache.commit(prepared)
            for key, value in (
                ("load", t1 - t0),
                ("compile", t2 - t1),
                ("prepare", t3 - t2),
                ("total", t3 - t0),
                ("load cpu", c1 - c0),
                ("compile cpu", c2 - c1),
                ("prepare cpu", c3 - c2),
                ("total cpu", c3 - c0),
            ):
                timings[key].append(value)
        encoded = sum(len(s.resources[t]) for s in prepared.snapshots.values() for t in s.resources)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.services} services, {args.routes} routes; {len(prepared.snapshots)} node-group snapshots, "
        f"{encoded} resource entries"
    )
    for key, values in timings.items():
        runs = ", ".join(f"{v:.3f}" for v in values)
        print(f"  {key:11s} median {statistics.median(values):.3f} s   (runs: {runs})")
    print(f"  peak RSS {peak_mb:.0f} MiB")


if __name__ == "__main__":
    main()
