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

import httpx
import pytest
import websockets

from authz_support import KEYS
from support import EchoFactory, EnvoyProcess, WaypostProcess
from threat_support import start_stack

pytestmark = pytest.mark.e2e


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
    stack = await start_stack(tmp_path, echo_backend, start_waypost, start_envoy)
    backend, port, waypost = stack.backend, stack.port, stack.waypost
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
        await stack.close()
