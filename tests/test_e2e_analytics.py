"""Call analytics end to end: a real Envoy streams its access log to waypost's collector.

Three consumers (API keys -> ext_authz -> dynamic metadata) call two routes; the figures in
``/analytics.json`` and on ``/metrics`` must match what was sent, exactly for counts and within
the sketch's error for latency. A restart keeps the history (SQLite), and with the collector
gone Envoy keeps serving while it counts the entries it drops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until
from support.analytics import DELAY_MS, KEYS, figures, send_traffic, start_stack, wait_in_sync, wait_total

pytestmark = pytest.mark.e2e


async def test_figures_match_what_was_sent_and_survive_a_restart(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    waypost, _, port = await start_stack(tmp_path, echo_backend, start_waypost, start_envoy)
    sent, slowest = await send_traffic(port)
    assert sent == 17
    # The warm-up calls are acme's on /orders (200 once the decision service answers).
    data = await wait_total(waypost, sent)
    await asyncio.sleep(1.5)  # nothing more arrives late
    data = await asyncio.to_thread(figures, waypost)
    warm = data["totals"]["requests"] - sent
    assert warm >= 1

    totals = data["totals"]
    assert totals["status"]["5xx"] == 3
    assert totals["status"]["429"] == 1
    assert totals["status"]["401"] == 2
    assert totals["errors"] == 3 and totals["limited"] == 1 and totals["unauthorized"] == 2

    consumers = {c["consumer"]: c for c in data["top_consumers"]}
    assert consumers["acme"]["requests"] == 8 + warm
    assert consumers["acme"]["errors"] == 3
    assert consumers["globex"]["requests"] == 4
    assert consumers["initech"]["requests"] == 3 and consumers["initech"]["plan"] == "gold"
    assert consumers[""]["requests"] == 2  # no credential: anonymous, 401
    # The Api dimension: `shop` lists orders; billing belongs to no Api.
    assert {a["api"]: a["requests"] for a in data["top_apis"]} == {"shop": 11 + warm, "": 6}
    routes = {r["route"]: r for r in data["top_routes"]}
    assert routes["billing"]["requests"] == 6
    assert routes["orders"]["requests"] == 11 + warm

    # Drill-down: globex's latency is the echo delay, within the sketch's 1% and what we saw.
    globex = (await asyncio.to_thread(figures, waypost, consumer="globex"))["totals"]
    assert globex["requests"] == 4
    for q in ("p50_ms", "p95_ms", "p99_ms"):
        assert DELAY_MS * 0.99 <= globex[q] <= slowest * 1.01, (q, globex[q], slowest)
    acme_billing = (await asyncio.to_thread(figures, waypost, consumer="acme", route="billing"))["totals"]
    assert acme_billing["requests"] == 3 and acme_billing["error_rate"] == 1.0

    # /metrics: the same counts, labelled by bounded dimensions.
    metric = waypost.metric
    assert metric("waypost_analytics_requests_total", consumer="acme", route="billing", status="5xx") == 3
    assert metric("waypost_analytics_requests_total", consumer="globex", route="orders", status="2xx") == 4
    assert metric("waypost_analytics_requests_total", consumer="initech", route="billing", status="429") == 1
    assert metric("waypost_analytics_requests_total", consumer="", route="orders", status="401") == 2
    assert metric("waypost_analytics_requests_total", api="shop", consumer="acme", status="2xx") == 5 + warm
    count = metric("waypost_analytics_request_duration_seconds_count", gateway="public", route="orders")
    assert count == 11 + warm

    # Restart: the history is in the store; new traffic adds to the reopened minute.
    await asyncio.to_thread(waypost.restart)
    after = await asyncio.to_thread(figures, waypost)
    assert after["totals"]["requests"] == sent + warm
    assert {c["consumer"]: c["requests"] for c in after["top_consumers"]}["globex"] == 4
    await wait_in_sync(waypost)
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:

        async def ok() -> bool:
            r = await client.get(f"http://127.0.0.1:{port}/orders/9", headers={"x-api-key": KEYS["globex"]})
            return r.status_code == 200

        await async_wait_until(ok, timeout=15, interval=0.2)
    data = await wait_total(waypost, sent + warm + 1)
    assert {c["consumer"]: c["requests"] for c in data["top_consumers"]}["globex"] >= 5
    minute = await asyncio.to_thread(figures, waypost, range="1h")
    assert minute["resolution"] == 60
    assert minute["totals"]["requests"] == data["totals"]["requests"]


async def test_envoy_keeps_serving_without_the_collector(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    waypost, envoy, port = await start_stack(tmp_path, echo_backend, start_waypost, start_envoy, auth=False)
    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        for _ in range(5):
            assert (await client.get(f"http://127.0.0.1:{port}/orders/1")).status_code == 200
        await wait_total(waypost, 5)
        written = envoy.stat("access_logs.grpc_access_log.logs_written") or 0
        assert written >= 5

        await asyncio.to_thread(waypost.stop)  # collector (and xDS) gone: Envoy keeps its config
        statuses = []
        for _ in range(50):
            statuses.append((await client.get(f"http://127.0.0.1:{port}/orders/2")).status_code)
            await asyncio.sleep(0.02)
        assert statuses == [200] * 50

        # Envoy counts what it handed to the logger, and the collector's cluster its failures...
        await async_wait_until(
            lambda: (envoy.stat("access_logs.grpc_access_log.logs_written") or 0) >= written + 50, timeout=10
        )
        assert (envoy.stat("cluster.waypost_analytics.upstream_cx_connect_fail") or 0) >= 1
        # ...and waypost what it received, per Envoy: the difference is what was lost.
        await asyncio.to_thread(waypost.start)
        await wait_in_sync(waypost)
        for _ in range(5):
            assert (await client.get(f"http://127.0.0.1:{port}/orders/3")).status_code == 200
        await wait_total(waypost, 10)
        received = waypost.metric("waypost_analytics_entries_total", node=envoy.node_id)
        handed = envoy.stat("access_logs.grpc_access_log.logs_written") or 0
        assert received == 5, received
        assert handed - written - received == 50
