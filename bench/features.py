"""Benchmark: requests/s through one Envoy for a feature-rich route versus a bare route.

The feature-rich route has CORS, gzip compression, the JSON access log (to a file) and native
deny rules (gateway and route RBAC); the bare route has none of them. Both are compiled by waypost
from policy files (the same compiler path as `waypost serve`), loaded into one gateway Envoy
(`--concurrency 1`) as a static config, and sent to one upstream: a second Envoy answering a
2 KiB JSON body directly, so the upstream is never the bottleneck. `wrk` (one thread, keep-alive,
`accept-encoding: gzip` on both) alternates between the two routes, and the ratio of medians is
reported: everything happens inside Envoy, so the goal is at least 0.8 of bare.

    .venv/bin/python bench/features.py [--duration 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from waypost.demo import find_envoy
from waypost.policies.loader import load_policies
from waypost.xds.compiler import compile_policy
from waypost.xds.render import static_bootstrap

BODY = json.dumps({"items": [{"id": i, "name": f"item-{i}", "price": i * 1.25} for i in range(40)]})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def policy(bare_port: int, rich_port: int, upstream_port: int) -> str:
    return f"""
kind: Service
name: upstream
endpoints: ["127.0.0.1:{upstream_port}"]
---
kind: Gateway
name: bare
port: {bare_port}
address: 127.0.0.1
---
kind: Route
name: bare
gateway: bare
match: {{prefix: /items}}
backend: upstream
---
kind: Gateway
name: rich
port: {rich_port}
address: 127.0.0.1
access_log: true
deny:
  - paths: ["/\\\\.git(/.*)?", "/wp-admin(/.*)?"]
  - headers: {{user-agent: "(?i).*(sqlmap|nikto).*"}}
---
kind: Route
name: rich
gateway: rich
match: {{prefix: /items}}
backend: upstream
cors: {{origins: ["https://app.example.com"], methods: [GET, POST], headers: [authorization], max_age: 1h}}
compression: true
deny: [{{paths: ["/items/internal(/.*)?"]}}]
"""


def upstream_config(port: int) -> dict[str, object]:
    route = {
        "match": {"prefix": "/"},
        "direct_response": {"status": 200, "body": {"inline_string": BODY}},
        "response_headers_to_add": [{"header": {"key": "content-type", "value": "application/json"}}],
    }
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
    return {
        "static_resources": {
            "listeners": [
                {
                    "name": "upstream",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                            ]
                        }
                    ],
                }
            ]
        }
    }


def start_envoy(envoy: Path, config: dict[str, object], workdir: Path, name: str) -> subprocess.Popen[bytes]:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    out = open(workdir / f"{name}.out", "wb")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [str(envoy), "-c", str(path), "--concurrency", "1", "--use-dynamic-base-id", "-l", "error"],
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", url], capture_output=True
        )
        if done.stdout == b"200":
            return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {timeout}s")


def wrk(url: str, duration: int, connections: int) -> float:
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "-H",
            "accept-encoding: gzip",
            "-H",
            "origin: https://app.example.com",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)
    if match is None or "Non-2xx" in done.stdout:
        raise SystemExit(f"wrk failed:\n{done.stdout}{done.stderr}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating bare/rich rounds")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    envoy = find_envoy()
    bare_port, rich_port, upstream_port = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        policies = workdir / "policies"
        policies.mkdir()
        (policies / "policy.yaml").write_text(policy(bare_port, rich_port, upstream_port))
        compiled = compile_policy(load_policies(policies))
        gateway_config = static_bootstrap(compiled.resources_for(("bare", "rich")))
        processes = [
            start_envoy(envoy, upstream_config(upstream_port), workdir, "upstream"),
            start_envoy(envoy, gateway_config, workdir, "gateway"),
        ]
        try:
            bare_url, rich_url = f"http://127.0.0.1:{bare_port}/items", f"http://127.0.0.1:{rich_port}/items"
            for url in (f"http://127.0.0.1:{upstream_port}/", bare_url, rich_url):
                wait_http(url)
            check = subprocess.run(
                ["curl", "-s", "-D-", "-o/dev/null", "-H", "accept-encoding: gzip", rich_url],
                capture_output=True,
                text=True,
            ).stdout.lower()
            assert "content-encoding: gzip" in check, check
            wrk(bare_url, 2, args.connections)  # warm-up
            wrk(rich_url, 2, args.connections)
            bare, rich = [], []
            for _ in range(args.rounds):
                bare.append(wrk(bare_url, args.duration, args.connections))
                rich.append(wrk(rich_url, args.duration, args.connections))
            logged = len((workdir / "gateway.out").read_bytes().splitlines())
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
    ratio = statistics.median(rich) / statistics.median(bare)
    print(
        f"{datetime.date.today()}  wrk -t1 -c{args.connections} -d{args.duration}s x{args.rounds}, "
        f"Envoy --concurrency 1, {len(BODY)} B JSON body"
    )
    for label, runs in (("bare route", bare), ("features route", rich)):
        shown = ", ".join(f"{v:.0f}" for v in runs)
        print(f"  {label:15s} median {statistics.median(runs):9.0f} req/s  (runs: {shown})")
    print(f"  ratio {ratio:.2f} (goal >= 0.80); {logged} access log lines written")


if __name__ == "__main__":
    main()
