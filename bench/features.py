"""Benchmark: requests/s through one Envoy for a feature-rich route versus a bare route.

The feature-rich route has CORS, gzip compression, the JSON access log (to a file) and native
deny rules (gateway and route RBAC); the bare route has none of them. Both are compiled by waypost
from policy files (the same compiler path as `waypost serve`), loaded into one gateway Envoy
(`--concurrency 1`) as a static config, and sent to one upstream: a second Envoy answering a
2 KiB JSON body directly, so the upstream is never the bottleneck. `wrk` (one thread, keep-alive,
`accept-encoding: gzip` on both) alternates between the two routes, and the ratio of medians is
reported: everything happens inside Envoy, so the goal is at least 0.8 of bare.

The machine is shared, so requests/s swing with whatever else runs. The benchmark therefore also
reports requests per CPU-second of the gateway Envoy (from /proc, during each run): the cost of
the features per request, which other load barely moves.

    .venv/bin/python bench/features.py [--duration 10] [--rounds 3] [--connections 32] [--breakdown]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
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


# Each variant is its own Gateway (listener) with one route, all in the same Envoy: (gateway
# fields, route fields). "features" is the feature-rich demo route; the single-feature variants
# show where its cost goes (--breakdown).
_DENY_GATEWAY = (
    "deny:\n"
    '  - paths: ["/\\\\.git(/.*)?", "/wp-admin(/.*)?"]\n'
    '  - headers: {user-agent: "(?i).*(sqlmap|nikto).*"}\n'
)
_DENY_ROUTE = 'deny: [{paths: ["/items/internal(/.*)?"]}]\n'
_CORS = (
    'cors: {origins: ["https://app.example.com"], methods: [GET, POST], headers: [authorization],'
    " max_age: 1h}\n"
)
VARIANTS: dict[str, tuple[str, str]] = {
    "bare": ("", ""),
    "features": ("access_log: true\n" + _DENY_GATEWAY, _CORS + "compression: true\n" + _DENY_ROUTE),
    "features, no gzip": ("access_log: true\n" + _DENY_GATEWAY, _CORS + _DENY_ROUTE),
    "cors only": ("", _CORS),
    "deny only": (_DENY_GATEWAY, _DENY_ROUTE),
    "access log only": ("access_log: true\n", ""),
    "gzip only": ("", "compression: true\n"),
    # The same features, with what a client that accepts zstd gets from a Gateway offering it...
    "features, zstd": (
        "access_log: true\ncompression: {algorithms: [zstd, gzip]}\n" + _DENY_GATEWAY,
        _CORS + "compression: true\n" + _DENY_ROUTE,
    ),
    # ... and with responses under 2 KiB sent as they are (the 1.8 KB body is not compressed).
    "features, min 2 KiB": (
        "access_log: true\ncompression: {min_bytes: 2048}\n" + _DENY_GATEWAY,
        _CORS + "compression: true\n" + _DENY_ROUTE,
    ),
}
ACCEPT_ENCODING = {"features, zstd": "zstd, gzip"}
"""What wrk asks for, when not ``gzip``."""


def gateway_name(variant: str) -> str:
    return variant.replace(",", "").replace(" ", "-")


def policy(variants: dict[str, int], upstream_port: int) -> str:
    text = f'kind: Service\nname: upstream\nendpoints: ["127.0.0.1:{upstream_port}"]\n'
    for variant, port in variants.items():
        gateway_fields, route_fields = VARIANTS[variant]
        name = gateway_name(variant)
        text += (
            f"---\nkind: Gateway\nname: {name}\nport: {port}\naddress: 127.0.0.1\n{gateway_fields}"
            f"---\nkind: Route\nname: {name}\ngateway: {name}\nmatch: {{prefix: /items}}\n"
            f"backend: upstream\n{route_fields}"
        )
    return text


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(url: str, duration: int, connections: int, accept: str = "gzip") -> tuple[float, int]:
    """Requests/s and the number of requests completed."""
    done = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "-H",
            f"accept-encoding: {accept}",
            "-H",
            "origin: https://app.example.com",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)
    count = re.search(r"([0-9]+) requests in", done.stdout)
    if rate is None or count is None or "Non-2xx" in done.stdout:
        raise SystemExit(f"wrk failed:\n{done.stdout}{done.stderr}")
    return float(rate.group(1)), int(count.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; each runs every variant once")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--breakdown", action="store_true", help="also measure each feature alone")
    parser.add_argument("--variants", nargs="*", help="only these variants (bare is always measured)")
    args = parser.parse_args()
    envoy = find_envoy()
    chosen = list(VARIANTS) if args.breakdown else ["bare", "features"]
    if args.variants:
        chosen = ["bare", *[v for v in args.variants if v != "bare"]]
    ports = {variant: free_port() for variant in chosen}
    upstream_port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        policies = workdir / "policies"
        policies.mkdir()
        (policies / "policy.yaml").write_text(policy(ports, upstream_port))
        compiled = compile_policy(load_policies(policies))
        gateway_config = static_bootstrap(compiled.resources_for(tuple(sorted(map(gateway_name, chosen)))))
        processes = [
            start_envoy(envoy, upstream_config(upstream_port), workdir, "upstream"),
            start_envoy(envoy, gateway_config, workdir, "gateway"),
        ]
        try:
            urls = {variant: f"http://127.0.0.1:{port}/items" for variant, port in ports.items()}
            wait_http(f"http://127.0.0.1:{upstream_port}/")
            for url in urls.values():
                wait_http(url)
            check = subprocess.run(
                ["curl", "-s", "-D-", "-o/dev/null", "-H", "accept-encoding: gzip", urls["features"]],
                capture_output=True,
                text=True,
            ).stdout.lower()
            assert "content-encoding: gzip" in check, check
            for url in urls.values():
                wrk(url, 2, args.connections)  # warm-up
            gateway_pid = processes[1].pid
            rates: dict[str, list[float]] = {variant: [] for variant in chosen}
            per_cpu: dict[str, list[float]] = {variant: [] for variant in chosen}
            for _ in range(args.rounds):
                for variant, url in urls.items():
                    cpu_before = cpu_seconds(gateway_pid)
                    accept = ACCEPT_ENCODING.get(variant, "gzip")
                    rate, count = wrk(url, args.duration, args.connections, accept)
                    rates[variant].append(rate)
                    per_cpu[variant].append(count / (cpu_seconds(gateway_pid) - cpu_before))
            logged = len((workdir / "gateway.out").read_bytes().splitlines())
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
    print(
        f"{datetime.date.today()}  wrk -t1 -c{args.connections} -d{args.duration}s x{args.rounds}, "
        f"Envoy --concurrency 1, {len(BODY)} B JSON body, accept-encoding: gzip"
    )
    bare_rate, bare_cpu = statistics.median(rates["bare"]), statistics.median(per_cpu["bare"])
    for variant in chosen:
        rate, cpu = statistics.median(rates[variant]), statistics.median(per_cpu[variant])
        shown = ", ".join(f"{v:.0f}" for v in rates[variant])
        print(
            f"  {variant:17s} {rate:6.0f} req/s ({rate / bare_rate:.2f} of bare; runs {shown})   "
            f"{cpu:6.0f} req per gateway CPU-second ({cpu / bare_cpu:.2f} of bare)"
        )
    print(f"  goal: features >= 0.80 of bare; {logged} access log lines written")
    print(f"  load average at the end {os.getloadavg()[0]:.1f} (2 cores shared)")


if __name__ == "__main__":
    main()
