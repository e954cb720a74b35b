"""Benchmark: threat protection through one Envoy, each variant side by side with its bare twin.

- native screening (``screen``, path + query + three headers matched by Envoy's RE2, no call to
  waypost) vs the same GET route without it: goal at least 0.9;
- validation of a 2 KiB JSON body (``validation.json_schema``: Envoy buffers the body and asks
  `waypost authz` over gRPC) vs the same POST route without it: goal at least 0.5.

All four routes are gateways of one Envoy (``--concurrency 1``) compiled from policy files like
`waypost serve` does, in front of an upstream Envoy answering 200 itself (never the bottleneck);
`waypost authz --workers W` answers the body checks. `wrk -t1` alternates between variants for
``--rounds`` rounds and the medians are compared. The machine is shared: only ratios of one run
mean much.

    .venv/bin/python bench/threat.py [--duration 5] [--rounds 3] [--connections 32] [--workers 1]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from features import cpu_seconds, free_port, start_envoy, upstream_config, wait_http

from waypost.contract import AUTHZ_CLUSTER
from waypost.demo import find_envoy
from waypost.policies.loader import load_policies
from waypost.policies.types import Endpoint
from waypost.xds.compiler import DecisionEndpoints, compile_policy
from waypost.xds.render import static_bootstrap

ORDER = {
    "customer": {"id": "c-1042", "name": "Ada Lovelace", "email": "ada@example.com"},
    "items": [
        {"sku": f"SKU-{i:05d}", "name": f"Widget number {i}", "qty": i % 5 + 1, "price": 9.5 + i}
        for i in range(25)
    ],
    "shipping": {"street": "12 Analytical Row", "city": "London", "zip": "N1 9GU", "country": "GB"},
    "note": "Leave at the door, please.",
}
BODY = json.dumps(ORDER)
SCHEMA = {
    "type": "object",
    "required": ["customer", "items"],
    "properties": {
        "customer": {
            "type": "object",
            "required": ["id", "name"],
            "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "email": {"type": "string"}},
        },
        "items": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "qty"],
                "properties": {
                    "sku": {"type": "string", "pattern": "^SKU-[0-9]{5}$"},
                    "name": {"type": "string", "maxLength": 200},
                    "qty": {"type": "integer", "minimum": 1},
                    "price": {"type": "number", "minimum": 0},
                },
            },
        },
        "shipping": {"type": "object"},
        "note": {"type": "string", "maxLength": 1000},
    },
}
# variant -> (route fields, method)
VARIANTS: dict[str, tuple[str, str]] = {
    "get bare": ("", "GET"),
    "get screened": ("screen: {}\n", "GET"),
    "post bare": ("", "POST"),
    "post validated": ("validation: {json_schema: order.schema.json}\n", "POST"),
}
PAIRS = {
    "native screening": ("get screened", "get bare", 0.9),
    "2 KiB body validation": ("post validated", "post bare", 0.5),
}


def policy(ports: dict[str, int], upstream_port: int) -> str:
    text = f'kind: Service\nname: upstream\nendpoints: ["127.0.0.1:{upstream_port}"]\n'
    for variant, port in ports.items():
        name = variant.replace(" ", "-")
        route_fields, _ = VARIANTS[variant]
        text += (
            f"---\nkind: Gateway\nname: {name}\nport: {port}\naddress: 127.0.0.1\n"
            f"---\nkind: Route\nname: {name}\ngateway: {name}\nmatch: {{prefix: /orders}}\n"
            f"backend: upstream\n{route_fields}"
        )
    return text


def wrk(url: str, method: str, duration: int, connections: int, script: Path) -> tuple[float, int]:
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "-H",
        "user-agent: Mozilla/5.0 (X11; Linux x86_64)",
    ]
    if method == "POST":
        argv += ["-s", str(script)]
    done = subprocess.run([*argv, url], capture_output=True, text=True, check=True)
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", done.stdout)
    count = re.search(r"([0-9]+) requests in", done.stdout)
    if rate is None or count is None or "Non-2xx" in done.stdout:
        raise SystemExit(f"wrk failed on {url}:\n{done.stdout}{done.stderr}")
    return float(rate.group(1)), int(count.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    envoy = find_envoy()
    ports = {variant: free_port() for variant in VARIANTS}
    upstream_port, authz_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        policies = workdir / "policies"
        policies.mkdir()
        (policies / "order.schema.json").write_text(json.dumps(SCHEMA))
        (policies / "policy.yaml").write_text(policy(ports, upstream_port))
        decisions = DecisionEndpoints(endpoints={AUTHZ_CLUSTER: (Endpoint("127.0.0.1", authz_port),)})
        compiled = compile_policy(load_policies(policies), decisions=decisions)
        names = tuple(sorted(v.replace(" ", "-") for v in VARIANTS))
        config = static_bootstrap(compiled.resources_for(names))
        script = workdir / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = {json.dumps(BODY)}\n"
        )
        processes = [
            start_envoy(envoy, upstream_config(upstream_port), workdir, "upstream"),
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "waypost",
                    "authz",
                    "--policies",
                    str(policies),
                    "--port",
                    str(authz_port),
                    "--workers",
                    str(args.workers),
                    "--host",
                    "127.0.0.1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(workdir / "authz.err", "wb"),  # noqa: SIM115
            ),
            start_envoy(envoy, config, workdir, "gateway"),
        ]
        try:
            urls = {v: f"http://127.0.0.1:{p}/orders?page=2&q=blue+widgets" for v, p in ports.items()}
            wait_http(f"http://127.0.0.1:{upstream_port}/")
            for variant, url in urls.items():
                if VARIANTS[variant][1] == "GET":
                    wait_http(url)
            validated = urls["post validated"]
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # `waypost authz` answers once its policy is loaded
                code = subprocess.run(
                    [
                        "curl",
                        "-s",
                        "-o/dev/null",
                        "-w",
                        "%{http_code}",
                        "-H",
                        "content-type: application/json",
                        "--data-binary",
                        BODY,
                        validated,
                    ],
                    capture_output=True,
                    text=True,
                ).stdout
                if code == "200":
                    break
                time.sleep(0.2)
            else:
                raise SystemExit(f"{validated} did not answer 200 (last {code}); see {workdir}/authz.err")
            for variant, url in urls.items():  # warm-up, and a check that POSTs pass validation
                wrk(url, VARIANTS[variant][1], 2, args.connections, script)
            gateway_pid = processes[2].pid
            rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
            per_cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for _ in range(args.rounds):
                for variant, url in urls.items():
                    before = cpu_seconds(gateway_pid)
                    rate, count = wrk(url, VARIANTS[variant][1], args.duration, args.connections, script)
                    rates[variant].append(rate)
                    per_cpu[variant].append(count / (cpu_seconds(gateway_pid) - before))
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)
    print(
        f"{datetime.date.today()}  wrk -t1 -c{args.connections} -d{args.duration}s x{args.rounds}, "
        f"Envoy --concurrency 1, waypost authz --workers {args.workers}, {len(BODY)} B JSON body"
    )
    for variant in VARIANTS:
        shown = ", ".join(f"{r:.0f}" for r in rates[variant])
        print(
            f"  {variant:15s} {statistics.median(rates[variant]):6.0f} req/s (runs {shown})  "
            f"{statistics.median(per_cpu[variant]):6.0f} req per gateway CPU-second"
        )
    for label, (variant, bare, goal) in PAIRS.items():
        ratio = statistics.median(rates[variant]) / statistics.median(rates[bare])
        cpu = statistics.median(per_cpu[variant]) / statistics.median(per_cpu[bare])
        print(f"  {label}: {ratio:.2f} of bare (goal >= {goal}); per gateway CPU-second {cpu:.2f}")
    print(f"  load average at the end {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores, shared)")


if __name__ == "__main__":
    main()
