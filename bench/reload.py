"""Benchmark: a change to a large policy directory, from reload to a real Envoy serving it.

10,000 Services and 10,000 Routes over 10 Gateways (the layout of ``bench/compile.py``, without
health checks so the Envoy is not busy probing 20,000 unreachable hosts). One process runs what
``waypost serve`` runs (:class:`PolicyRuntime`, :class:`SnapshotCache`, the ADS server on uvloop);
one real Envoy (``--concurrency 1``) selects 3 of the Gateways (about 3,000 routes and clusters).
The real file watcher runs (as in ``waypost serve``: debounce 0.25 s, settle window 0.25 s). Two
changes, alternating, each timed from the start of the reload the watcher calls after its
debounce to the first request Envoy answers with the new config (and, as "from write", from the
write itself, debounce included):

* **route added**: a Route appended to ``routes-gw1.yaml``, polled until Envoy stops answering 404;
* **endpoint changed**: one Service's endpoint moved to a second echo server, polled until the
  answer comes from it; and which xDS types were pushed for it (``waypost_xds_pushes_total``).

``--full`` turns the incremental caches off (every reload loads, compiles and encodes
everything), for the figure before, measured in the same run:

    .venv/bin/python bench/reload.py [--services 10000] [--routes 10000] [--rounds 3] [--full] [--git]

``--git`` makes the directory a git checkout and each change a commit: what ``waypost serve``
reads by default there (the committed tree, no settle window); "from write" is then from the
commit.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from waypost.demo import find_envoy
from waypost.h2grpc import start_grpc_server
from waypost.log import configure_logging
from waypost.metrics import XDS_PUSHES
from waypost.policies.load_cache import LoadCache
from waypost.server.app import XdsApplier
from waypost.server.decisions import DecisionOptions, DecisionPlane
from waypost.server.runtime import PolicyRuntime
from waypost.server.watch import PolicyWatcher
from waypost.xds.ads import XDS_LIMITS, AdsServer
from waypost.xds.bootstrap import build_bootstrap
from waypost.xds.cache import SnapshotCache
from waypost.xds.compiler import CompileMemo
from waypost.xds.snapshot import ResourceEncoder

GATEWAYS = 10
ENVOY_FLAGS = ("--concurrency", "1", "--use-dynamic-base-id", "-l", "warning")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_policies(directory: Path, services: int, routes: int, echo: str, ports: list[int]) -> None:
    with open(directory / "gateways.yaml", "w") as out:
        for g in range(GATEWAYS):
            out.write(
                f"---\nkind: Gateway\nname: gw{g}\nport: {ports[g]}\naddress: 127.0.0.1\n"
                f"nodes: {{cluster: edge{g % 3}}}\n"
            )
    # One file per Gateway's routes and per 1,000 Services: a policy file is at most 1 MiB.
    for s in range(services):
        with open(directory / f"services{s // 1000}.yaml", "a") as out:
            endpoints = f"['{echo}']" if s == 1 else f"['10.{s // 250}.{s % 250}.1:8080']"
            out.write(
                f"---\nkind: Service\nname: svc{s}\nendpoints: {endpoints}\nconnect_timeout: 1s\n"
                "circuit_breaker: {max_connections: 1024, max_requests: 1024}\n"
            )
    for r in range(routes):
        with open(directory / f"routes-gw{r % GATEWAYS}.yaml", "a") as out:
            out.write(
                f"---\nkind: Route\nname: route{r}\ngateway: gw{r % GATEWAYS}\n"
                f"match: {{prefix: /v1/r{r}/, methods: [GET, POST]}}\n"
                f"backend: svc{r % services}\ntimeout: 5s\n"
                "retries: {attempts: 2, on: [5xx, reset]}\n"
            )


TIMES = ("route", "route reload", "route from write", "eds", "eds reload", "eds from write")


class Reloads:
    """When each reload the watcher runs starts and ends."""

    def __init__(self, runtime: PolicyRuntime) -> None:
        self.done: list[tuple[float, float]] = []
        reload = runtime.reload

        async def timed() -> bool:
            start = time.perf_counter()
            try:
                return await reload()
            finally:
                self.done.append((start, time.perf_counter()))

        runtime.reload = timed  # type: ignore[method-assign]

    async def wait_for(self, after: float) -> tuple[float, float]:
        """The first reload that started after ``after``, once it ended."""
        for _ in range(3000):
            for start, end in self.done:
                if start > after:
                    return start, end
            await asyncio.sleep(0.01)
        raise TimeoutError("no reload")


def forget(runtime: PolicyRuntime, xds: XdsApplier, cache: SnapshotCache) -> None:
    """The caches off: everything is loaded, compiled, encoded and cut into snapshots again."""
    runtime._load_cache, xds.memo = LoadCache(), CompileMemo()
    cache._encoder = ResourceEncoder()
    cache._snapshots = {}


def git(directory: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", *args],
        cwd=directory,
        check=True,
    )


def pushes() -> dict[str, float]:
    out: dict[str, float] = {}
    for metric in XDS_PUSHES.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                out[sample.labels["type"]] = out.get(sample.labels["type"], 0) + sample.value
    return out


_POLLER = """
import http.client, sys, time
for line in sys.stdin:
    port, path, needle = line.rstrip("\\n").split("\\t")
    deadline = time.perf_counter() + 120
    while time.perf_counter() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
            conn.request("GET", path)
            answer = conn.getresponse()
            body = answer.read().decode(errors="replace")
            conn.close()
            if answer.status == 200 and needle in body:
                break
        except OSError:
            pass
        time.sleep(0.002)
    print(time.perf_counter(), flush=True)
"""


class Poller:
    """Polls Envoy from a process of its own (every 2 ms), so the polling never competes with the
    reload for this process's GIL; ``time.perf_counter`` is CLOCK_MONOTONIC, one clock for both."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-c", _POLLER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    async def until(self, port: int, path: str, needle: str = "") -> float:
        """When ``GET path`` first answered 200 with ``needle`` in its body."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(f"{port}\t{path}\t{needle}\n")
        self._process.stdin.flush()
        return float(await asyncio.to_thread(self._process.stdout.readline))

    def close(self) -> None:
        self._process.kill()


async def run(args: argparse.Namespace, work: Path) -> None:
    configure_logging("warning")
    echo_ports = [free_port(), free_port()]
    echos = [
        subprocess.Popen(
            [sys.executable, "-m", "waypost.demo.echo", "--name", f"echo{i}", "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i, port in enumerate(echo_ports)
    ]
    policies = work / "policies"
    policies.mkdir()
    ports = [free_port() for _ in range(GATEWAYS)]
    write_policies(policies, args.services, args.routes, f"127.0.0.1:{echo_ports[0]}", ports)
    if args.git:  # serve's default in a checkout: the committed tree is what is served
        git(policies, "init", "-q")
        git(policies, "add", ".")
        git(policies, "commit", "-qm", "initial")
    cache = SnapshotCache()
    plane = DecisionPlane(DecisionOptions(authz=False))  # no decision service: routes need none
    await plane.open()
    xds = XdsApplier(cache, plane)
    runtime = PolicyRuntime(policies, [xds])
    started = time.perf_counter()
    if not await runtime.reload():
        raise SystemExit(f"the initial policy was refused: {runtime.last_failure}")
    print(f"initial load + compile + prepare: {time.perf_counter() - started:.2f} s")
    # The file watcher of `waypost serve` (debounce 0.25 s) calls the runtime's reload.
    reloads = Reloads(runtime)
    watcher = PolicyWatcher.for_runtime(runtime, loop=asyncio.get_running_loop())
    watcher.start()
    ads = AdsServer(cache)
    server = await start_grpc_server(ads.services(), "127.0.0.1", 0, limits=XDS_LIMITS)  # as serve
    xds_port = server.port
    bootstrap = build_bootstrap(
        node_id="bench", node_cluster="edge1", xds_host="127.0.0.1", xds_port=xds_port, admin_port=0
    )
    (work / "bootstrap.yaml").write_text(yaml.safe_dump(bootstrap))
    envoy = subprocess.Popen(
        [
            str(find_envoy()),
            "-c",
            str(work / "bootstrap.yaml"),
            "--concurrency",
            "1",
            "--use-dynamic-base-id",
            "-l",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(work / "envoy.log").open("wb"),
    )
    poller = Poller()
    results: dict[str, dict[str, list[float]]] = {}
    try:
        started = time.perf_counter()
        await poller.until(ports[1], "/v1/r1/x")
        print(f"Envoy serving the initial config {time.perf_counter() - started:.1f} s after it started")
        services = (policies / "services0.yaml").read_text()
        modes = ["incremental", "full"] if args.full else ["incremental"]
        for round_ in range(args.rounds):
            for mode in modes:
                times = results.setdefault(mode, {key: [] for key in TIMES})
                name = f"added{round_}{mode[0]}"
                if mode == "full":
                    forget(runtime, xds, cache)
                t0 = time.perf_counter()
                with open(policies / "routes-gw1.yaml", "a") as out:
                    out.write(
                        f"---\nkind: Route\nname: {name}\ngateway: gw1\nmatch: {{prefix: /{name}}}\n"
                        "backend: svc1\n"
                    )
                if args.git:
                    git(policies, "commit", "-qam", name)
                    t0 = time.perf_counter()  # the change is the commit
                t1 = await poller.until(ports[1], f"/{name}")
                start, end = await reloads.wait_for(t0)
                times["route"].append(t1 - start)
                times["route reload"].append(end - start)
                times["route from write"].append(t1 - t0)
                await asyncio.sleep(0.3)

                if mode == "full":
                    forget(runtime, xds, cache)
                target = (round_ * len(modes) + modes.index(mode)) % 2 == 0
                port = echo_ports[1] if target else echo_ports[0]
                name_expected = "echo1" if target else "echo0"
                before = pushes()
                t0 = time.perf_counter()
                (policies / "services0.yaml").write_text(
                    services.replace(f"'127.0.0.1:{echo_ports[0]}'", f"'127.0.0.1:{port}'")
                )
                if args.git:
                    git(policies, "commit", "-qam", f"endpoint {round_} {mode}")
                    t0 = time.perf_counter()
                t1 = await poller.until(ports[1], "/v1/r1/x", name_expected)
                start, end = await reloads.wait_for(t0)
                times["eds"].append(t1 - start)
                times["eds reload"].append(end - start)
                times["eds from write"].append(t1 - t0)
                await asyncio.sleep(0.3)
                after = pushes()
                pushed = {k: int(v - before.get(k, 0)) for k, v in after.items() if v != before.get(k, 0)}
                print(f"  round {round_} {mode}: endpoint change pushed {pushed}")
    except TimeoutError:
        print((work / "envoy.log").read_text()[-3000:])
        raise
    finally:
        watcher.stop()
        envoy.terminate()
        envoy.wait(10)
        for echo in echos:
            echo.terminate()
        poller.close()
        await server.stop()
        ads.close()
    for mode, times in results.items():
        parts = []
        for key, values in times.items():
            runs = ", ".join(f"{v:.3f}" for v in values)
            parts.append(f"{key} median {statistics.median(values):.3f} s (runs {runs})")
        print(f"{mode}: " + "; ".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--routes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--full", action="store_true", help="also time full reloads (caches off), alternating"
    )
    parser.add_argument(
        "--git",
        action="store_true",
        help="a git checkout: each change is a commit, read from the commit (no settle window)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            import uvloop

            uvloop.run(run(args, Path(tmp)))
        except ImportError:
            asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
