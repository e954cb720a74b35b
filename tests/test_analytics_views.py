"""Call analytics views against real processes: the fleet figures a real Prometheus sums over two
waypost replicas, the analytics page in headless Chromium (screenshot kept in
test-artifacts/analytics.png), and ``waypost top``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from support import REPO_ROOT, EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until, free_port, get
from support.analytics import KEYS, send_traffic, start_stack, wait_total
from support.browser import headless
from support.procs import SRC_DIR
from support.prometheus import PrometheusProcess, find_prometheus

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "test-artifacts"


def fleet(waypost: WaypostProcess) -> dict[str, Any]:
    response = get(f"{waypost.admin_url}/analytics/fleet.json?range=5m", timeout=10)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def test_fleet_view_sums_two_replicas_and_the_page_draws_it(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    binary = find_prometheus()
    if binary is None:
        pytest.fail("prometheus is not installed: run `make system-deps`", pytrace=False)
    prometheus_port = free_port()
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    one, _, port_one = await start_stack(
        tmp_path,
        echo_backend,
        start_waypost,
        start_envoy,
        name="one",
        extra=("--prometheus-url", prometheus_url),
    )
    two, _, port_two = await start_stack(tmp_path, echo_backend, start_waypost, start_envoy, name="two")
    prometheus = PrometheusProcess(
        workdir=tmp_path,
        binary=binary,
        port=prometheus_port,
        targets=[f"127.0.0.1:{one.admin_port}", f"127.0.0.1:{two.admin_port}"],
    )
    with prometheus:
        await asyncio.to_thread(prometheus.start)
        sent_one, _ = await send_traffic(port_one)
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            for _ in range(6):
                await client.get(
                    f"http://127.0.0.1:{port_two}/orders/1", headers={"x-api-key": KEYS["globex"]}
                )
        # Each replica's own total (warm-up calls included), then the fleet's: their sum.
        own_one = (await wait_total(one, sent_one))["totals"]["requests"]
        own_two = (await wait_total(two, 6))["totals"]["requests"]
        await asyncio.sleep(1.5)
        own_one = (await wait_total(one, own_one))["totals"]["requests"]
        own_two = (await wait_total(two, own_two))["totals"]["requests"]

        async def summed() -> dict[str, Any] | None:
            data = await asyncio.to_thread(fleet, one)
            return data if data["totals"]["requests"] == own_one + own_two else None

        data = await async_wait_until(summed, timeout=30, interval=1, message="the fleet sum in Prometheus")
        replicas = {r["instance"]: r["requests"] for r in data["totals"]["replicas"]}
        assert replicas == {f"127.0.0.1:{one.admin_port}": own_one, f"127.0.0.1:{two.admin_port}": own_two}
        # Fleet percentiles come from rate() over the summed histograms: they need growth between
        # two scrapes, so some traffic after the series first appeared.
        async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
            for _ in range(5):
                await client.get(
                    f"http://127.0.0.1:{port_two}/orders/1", headers={"x-api-key": KEYS["globex"]}
                )

        seen: list[dict[str, Any]] = []

        async def latency() -> dict[str, Any] | None:
            data = await asyncio.to_thread(fleet, one)
            seen.append(data)
            done = (
                data["in_range"]["p95_ms"] is not None and data["totals"]["requests"] == own_one + own_two + 5
            )
            return data if done else None

        data = await async_wait_until(
            latency, timeout=30, interval=1, message=lambda: f"fleet p95: {seen[-1:]}"
        )
        assert data["in_range"]["p50_ms"] > 0
        # The second replica has no Prometheus: it says so, with a 404 and the flag to use.
        assert get(f"{two.admin_url}/analytics/fleet.json", timeout=5).status_code == 404

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / "analytics.png"
        shot.unlink(missing_ok=True)
        url = f"{one.admin_url}/analytics?range=5m"
        dom = await asyncio.to_thread(headless, url, tmp_path / "chromium-dom", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        html = dom.stdout
        assert 'id="k-requests">' + f"{int(own_one)}<" in html, html[:3000]
        for consumer in ("acme", "globex", "initech"):
            assert f"<td>{consumer}</td>" in html
        assert "main-svg" in html  # plotly drew its charts
        assert f">{int(own_one + own_two + 5)}<" in html  # the fleet section's total
        result = await asyncio.to_thread(
            headless, url, tmp_path / "chromium-shot", f"--screenshot={shot}", "--window-size=1280,1700"
        )
        assert result.returncode == 0, result.stderr[-2000:]
        assert shot.exists() and shot.stat().st_size > 10_000

        # `waypost top --once` prints the same live figures in a terminal.
        top = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "waypost", "top", "--admin", one.admin_url, "--once", "--seconds", "60"],
            capture_output=True,
            text=True,
            timeout=30,
            env={"PYTHONPATH": str(SRC_DIR), "COLUMNS": "140"},
        )
        assert top.returncode == 0, top.stderr
        for name in ("orders", "billing", "acme", "globex", "initech", "req/s"):
            assert name in top.stdout, top.stdout
