"""Benchmark: an admin's approval in the portal -> the key gets 200 through Envoy.

One ``waypost serve --git-pull INTERVAL --portal-port`` (decision services in process) on a clone
of a bare upstream, one Envoy, one echo backend. Each round: a developer signs up through the
portal API, requests the ``gold`` plan (needs approval), the key gets 403 through Envoy; then the
admin's approve call (what the button sends) is timed, and Envoy is polled every 10 ms until the
key gets 200. Reported per pull interval: the approve call alone (commit + push), and click ->
200. Goal: under 3 s with the pull interval set for the test (1 s, and 200 ms as the tests use).

    .venv/bin/python bench/portal.py [--rounds 5] [--intervals 0.2,1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.gitrepo import GitRepo  # noqa: E402
from support.portal import ADMIN_KEY, seed_upstream  # noqa: E402
from waypost.demo import find_envoy  # noqa: E402
from waypost.demo.echo import start_echo  # noqa: E402
from waypost.xds.bootstrap import build_bootstrap  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait(predicate, timeout: float, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        await asyncio.sleep(interval)
    raise TimeoutError(f"waited {timeout} s")


async def portal_client(base: str, key: str | None = None) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base, trust_env=False, timeout=30)
    client.headers["x-csrf-token"] = (await client.get("/api/session")).json()["csrf"]
    if key is not None:
        (await client.post("/api/session", json={"key": key})).raise_for_status()
    return client


async def one_interval(interval: float, rounds: int, tmp: Path) -> tuple[list[float], list[float]]:
    echo = await start_echo("orders", "127.0.0.1", 0)
    gateway, xds, admin, portal = (free_port() for _ in range(4))
    upstream, _ = seed_upstream(tmp, gateway_port=gateway, backend_port=echo.port)
    served = GitRepo.clone(upstream.path, tmp / "served")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    waypost = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "waypost",
            "serve",
            "--policies",
            str(served.path / "policies"),
            "--host",
            "127.0.0.1",
            "--xds-port",
            str(xds),
            "--admin-port",
            str(admin),
            "--git-pull",
            str(interval),
            # decision services on ports the kernel picks (Envoy learns them over EDS)
            "--authz-port",
            "0",
            "--authz-http-port",
            "0",
            "--ratelimit-port",
            "0",
            "--portal-port",
            str(portal),
            "--portal-workdir",
            str(tmp / "portal-clone"),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    bootstrap = tmp / "bootstrap.yaml"
    bootstrap.write_text(
        yaml.safe_dump(
            build_bootstrap(
                node_id="bench",
                node_cluster="edge",
                xds_host="127.0.0.1",
                xds_port=xds,
                admin_port=0,
            )
        )
    )
    envoy = subprocess.Popen(
        [str(find_envoy()), "-c", str(bootstrap), "--use-dynamic-base-id", "-l", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{portal}"
    url = f"http://127.0.0.1:{gateway}/orders/1"
    approve_s: list[float] = []
    total_s: list[float] = []
    try:
        async with httpx.AsyncClient(trust_env=False, timeout=5) as gw:
            await wait(lambda: _status(gw, url, None, 401), 60)
            admin_client = await portal_client(base, ADMIN_KEY)
            for index in range(rounds):
                dev = await portal_client(base)
                key = (await dev.post("/api/signup", json={"name": f"bench-{index}"})).json()["key"]
                assert (await dev.post("/api/subscriptions", json={"api": "orders", "plan": "gold"})).json()[
                    "status"
                ] == "pending"
                await wait(lambda key=key: _status(gw, url, key, 403), 30)
                [pending] = (await admin_client.get("/api/admin/requests")).json()["pending"]
                clicked = time.monotonic()
                (await admin_client.post(f"/api/admin/requests/{pending['id']}/approve")).raise_for_status()
                approve_s.append(time.monotonic() - clicked)
                await wait(lambda key=key: _status(gw, url, key, 200), 30, interval=0.01)
                total_s.append(time.monotonic() - clicked)
                await dev.aclose()
            await admin_client.aclose()
    finally:
        envoy.terminate()
        waypost.terminate()
        envoy.wait(10)
        waypost.wait(10)
        await echo.close()
    return approve_s, total_s


async def _status(client: httpx.AsyncClient, url: str, key: str | None, expected: int) -> bool:
    headers = {"x-api-key": key} if key else {}
    return (await client.get(url, headers=headers)).status_code == expected


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--intervals", default="0.2,1")
    args = parser.parse_args()
    print("| pull interval | approve call (commit + push), median / max |", end=" ")
    print("click -> 200 through Envoy, median / max |")
    print("| --- | --- | --- |")
    for interval in (float(v) for v in args.intervals.split(",")):
        with tempfile.TemporaryDirectory(prefix="waypost-bench-portal-") as tmp:
            approve, total = asyncio.run(one_interval(interval, args.rounds, Path(tmp)))
        print(
            f"| {interval:g} s | {statistics.median(approve):.2f} s / {max(approve):.2f} s "
            f"| {statistics.median(total):.2f} s / {max(total):.2f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
