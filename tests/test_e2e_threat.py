"""End to end: request validation, CORS preflights, WebSocket upgrades, through a real Envoy.

One stack: an echo backend, a WebSocket echo backend (the ``websockets`` library), `waypost serve
--authz-port` (which also answers body checks) and an Envoy bootstrapped with the decision
service. Validation failures must never reach the backend; a route without validation is
untouched.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from authz_support import KEYS
from support import EchoFactory, EnvoyProcess, WaypostProcess, free_ports
from threat_support import write_policies

pytestmark = pytest.mark.e2e


async def _ws_echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(f"echo:{message}")


async def start_stack(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
    *,
    screen_mode: str = "block",
) -> tuple[Any, Any, int, WaypostProcess, EnvoyProcess]:
    backend = await echo_backend("echo")
    ws_server = await serve(_ws_echo, "127.0.0.1", 0)
    ws_port = ws_server.sockets[0].getsockname()[1] if ws_server.sockets else 0
    port, authz_port = free_ports(2)
    policies = write_policies(
        tmp_path / "policies",
        port=port,
        backend=backend.address,
        ws_backend=f"127.0.0.1:{ws_port}",
        screen_mode=screen_mode,
    )
    waypost = await asyncio.to_thread(start_waypost, policies, args=["--authz-port", str(authz_port)])
    envoy = await asyncio.to_thread(
        start_envoy, xds_port=waypost.xds_port, bootstrap_options={"authz": ("127.0.0.1", authz_port)}
    )
    await asyncio.to_thread(envoy.wait_for_listener, port)
    return backend, ws_server, port, waypost, envoy


def _problems(response: httpx.Response) -> set[tuple[str, str]]:
    assert response.status_code == 400, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    return {(p["in"], p["at"]) for p in body["problems"]}


async def test_validation_cors_and_websocket(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend, ws_server, port, waypost, envoy = await start_stack(
        tmp_path, echo_backend, start_waypost, start_envoy
    )
    base = f"http://127.0.0.1:{port}"
    good_item = {"name": "order", "items": [{"sku": "a-1", "qty": 2}]}
    need = {"x-request-id-client": "r1"}
    try:
        async with httpx.AsyncClient(base_url=base, trust_env=False, timeout=5) as client:
            # --- JSON Schema route ------------------------------------------------------------
            ok = await client.post("/items?dry_run=true", json=good_item, headers=need)
            assert ok.status_code == 200, ok.text
            assert json.loads(backend.requests[-1].body) == good_item  # the body reached it whole
            seen = len(backend.requests)

            bad = await client.post(
                "/items?dry_run=maybe", json={"name": 7, "items": [{"sku": "a", "qty": 0}]}
            )
            assert _problems(bad) == {
                ("header", "x-request-id-client"),
                ("query", "dry_run"),
                ("body", "/name"),
                ("body", "/items/0/qty"),
            }
            assert any("minimum of 1" in p["message"] for p in bad.json()["problems"])
            wrong_type = await client.post(
                "/items",
                content=b"name=x",
                headers={**need, "content-type": "application/x-www-form-urlencoded"},
            )
            assert _problems(wrong_type) == {("header", "content-type")}
            not_json = await client.post(
                "/items", content=b"{nope", headers={**need, "content-type": "application/json"}
            )
            assert _problems(not_json) == {("body", "/")}
            big = {"name": "x", "items": [{"sku": "s" * 100, "qty": 1}] * 60}
            oversized = await client.post("/items", json=big, headers=need)
            assert oversized.status_code == 413
            assert len(backend.requests) == seen, "a refused request reached the backend"

            # --- OpenAPI route ----------------------------------------------------------------
            assert (await client.get("/pets/12")).status_code == 200
            assert _problems(await client.get("/pets/abc")) == {("path", "petId")}
            assert _problems(await client.get("/pets?limit=500")) == {
                ("header", "x-trace"),
                ("query", "limit"),
            }
            assert (await client.get("/pets?limit=5", headers={"x-trace": "t"})).status_code == 200
            assert _problems(await client.post("/pets", json={"name": ""})) == {("body", "/name")}
            assert _problems(await client.post("/pets")) == {("body", "/")}
            assert (await client.post("/pets", json={"name": "rex"})).status_code == 200
            assert _problems(await client.delete("/pets")) == {("path", "/pets")}
            assert _problems(await client.get("/pets/1/2")) == {("path", "/pets/1/2")}

            # --- a route without validation is untouched --------------------------------------
            raw = await client.post("/plain", content=b"{not json", headers={"content-type": "text/weird"})
            assert raw.status_code == 200
            assert backend.requests[-1].body == "{not json"

            # --- CORS: the spec's route answers its preflight whatever its conditions ---------
            preflight = await client.options(
                "/v1/orders/7",
                headers={
                    "origin": "https://app.example.com",
                    "access-control-request-method": "POST",
                    "access-control-request-headers": "x-custom",
                },
            )
            assert preflight.status_code == 200, preflight.text
            assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
            assert "POST" in preflight.headers["access-control-allow-methods"]
            assert preflight.headers["access-control-allow-credentials"] == "true"
            seen = len(backend.requests)
            stranger = await client.options(
                "/v1/orders/7",
                headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
            )
            assert stranger.status_code == 200  # answered by Envoy, without CORS headers
            assert "access-control-allow-origin" not in stranger.headers
            plain_options = await client.options("/v1/orders/7", headers={"x-canary": "true"})
            assert plain_options.status_code == 404  # OPTIONS is not opened to the backend
            assert len(backend.requests) == seen
            actual = await client.post(
                "/v1/orders/7", headers={"x-canary": "true", "origin": "https://app.example.com"}
            )
            assert actual.status_code == 200
            assert actual.headers["access-control-allow-origin"] == "https://app.example.com"

        # --- WebSocket: the upgrade is authenticated, then messages flow ----------------------
        url = f"ws://127.0.0.1:{port}/chat"
        async with websockets.connect(url, additional_headers={"x-api-key": KEYS["acme"]}) as socket:
            for text in ("hello", "again"):
                await socket.send(text)
                assert await asyncio.wait_for(socket.recv(), 5) == f"echo:{text}"
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(url):
                pass
        assert refused.value.response.status_code == 401

        assert waypost.metric("waypost_validation_failures_total", route="items") == 3
    finally:
        ws_server.close()
        await ws_server.wait_closed()
