"""Slowloris and connection floods against a real Envoy stay bounded, and other clients are served;
clients are allowed and denied by user-agent.

- Slowloris: clients that trickle request headers are cut off by ``request_headers_timeout``
  (408, connection closed) while a normal client keeps getting quick answers.
- Flood: more idle connections than ``waypost bootstrap --max-connections`` allows; Envoy never
  holds more than the cap, refuses the rest at once, reaps the idle ones (``idle_timeout``), and a
  normal client is served again.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until, free_ports

pytestmark = pytest.mark.e2e

HEADERS_TIMEOUT_S = 1
IDLE_TIMEOUT_S = 2
MAX_CONNECTIONS = 40


async def _stack(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> tuple[int, EnvoyProcess]:
    backend = await echo_backend("echo")
    (port,) = free_ports(1)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(
        f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
limits:
  request_headers_timeout: {HEADERS_TIMEOUT_S}s
  idle_timeout: {IDLE_TIMEOUT_S}s
  user_agents: {{allow: ["python-httpx/.*", "(?i)mozilla/.*"], deny: ["(?i).*(sqlmap|nikto).*"]}}
---
kind: Service
name: echo
endpoints: ["{backend.address}"]
---
kind: Route
name: all
gateway: public
match: {{prefix: /}}
backend: echo
"""
    )
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(
        start_envoy, xds_port=waypost.xds_port, bootstrap_options={"max_connections": MAX_CONNECTIONS}
    )
    await asyncio.to_thread(envoy.wait_for_listener, port)
    return port, envoy


async def _served(port: int) -> float:
    """Seconds a fresh client needs for one request (fails if it is not answered with 200)."""
    started = time.monotonic()
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        response = await client.get(f"http://127.0.0.1:{port}/ok")
    assert response.status_code == 200
    return time.monotonic() - started


async def _slowloris(port: int) -> tuple[float, bytes]:
    """Send headers one byte at a time, never finishing; how long until Envoy hangs up, and what
    it said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    request = b"GET / HTTP/1.1\r\nhost: x\r\nx-padding: " + b"a" * 200
    answer = b""
    try:
        for byte in request:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(4096), 0.2)
            except TimeoutError:
                continue
            if answer == b"" or answer:
                break
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return time.monotonic() - started, answer


async def test_slowloris_is_cut_off_while_others_are_served(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    port, envoy = await _stack(tmp_path, echo_backend, start_waypost, start_envoy)
    attackers = [asyncio.create_task(_slowloris(port)) for _ in range(20)]
    await asyncio.sleep(0.3)
    latencies = [await _served(port) for _ in range(10)]
    assert max(latencies) < 1.0, latencies
    results = await asyncio.gather(*attackers)
    for held, answer in results:
        # Cut at the headers timeout (plus scheduling slack), never held for the 40 s the
        # trickle would take.
        assert held < HEADERS_TIMEOUT_S + 2.5, held
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:80]
    assert (envoy.stat("http.public.downstream_rq_header_timeout") or 0) >= 1


async def test_connection_flood_is_capped_and_reaped(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    port, envoy = await _stack(tmp_path, echo_backend, start_waypost, start_envoy)
    flood = []
    for _ in range(MAX_CONNECTIONS * 2):
        with contextlib.suppress(OSError):
            flood.append(await asyncio.open_connection("127.0.0.1", port))
    try:
        await asyncio.sleep(0.5)
        active = envoy.stats(filter=r"^listener\.127\.0\.0\.1_\d+\.downstream_cx_active$")
        assert sum(active.values()) <= MAX_CONNECTIONS, active
        refused = envoy.stat(f"listener.127.0.0.1_{port}.downstream_cx_overload_reject") or 0
        overflow = envoy.stats(filter="overflow|overload_reject")
        print("FLOOD", refused, {k: v for k, v in overflow.items() if v}, active)
        assert refused > 0 or any(v > 0 for v in overflow.values()), overflow

        # Idle flood connections are reaped; then a normal client gets through again.
        async def served() -> bool:
            try:
                await _served(port)
            except (httpx.HTTPError, AssertionError):
                return False
            return True

        await async_wait_until(served, IDLE_TIMEOUT_S + 8, interval=0.25, message="a client to be served")
    finally:
        for _, writer in flood:
            writer.close()


async def test_user_agents_allowed_and_denied(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    port, _ = await _stack(tmp_path, echo_backend, start_waypost, start_envoy)
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:

        async def status(user_agent: str | None) -> int:
            headers = {"user-agent": user_agent} if user_agent is not None else {}
            request = client.build_request("GET", f"http://127.0.0.1:{port}/x", headers=headers)
            if user_agent is None:
                del request.headers["user-agent"]
            return (await client.send(request)).status_code

        assert await status("Mozilla/5.0 (X11; Linux x86_64)") == 200
        assert await status(None) == 403  # an allow-list is not passed by sending nothing
        assert await status("curl/8.5.0") == 403
        assert await status("Mozilla/5.0 sqlmap/1.8") == 403  # deny wins over allow
