"""End to end: a client cannot forge the headers waypost sets for identity, nor dodge a host-scoped
route by spelling the host differently (issue 12, items 3 and 9).

One stack: an echo backend, `waypost serve --authz-port --authz-http-port`, a real Envoy with two
Gateways (ext_authz over gRPC and over HTTP) whose routes identify callers by API key, JWT (on
the ext_authz path and natively through jwt_authn), a custom plugin, or not at all. Every request
carries forged identity headers; the backend must see only what waypost set.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authz_support import ISSUER, KEYS, PLUGIN_DIR, Signer, key_hash
from support import EchoFactory, EnvoyProcess, WaypostProcess, free_ports, wait_until
from support.keepalive import KeepAliveClient
from support.procs import SRC_DIR

pytestmark = pytest.mark.e2e

POLICY = """
kind: Gateway
name: edge
port: {grpc_port}
address: 127.0.0.1
nodes: {{cluster: edge}}
---
kind: Gateway
name: edgehttp
port: {http_port}
address: 127.0.0.1
nodes: {{cluster: edge}}
auth_service: http
---
kind: Gateway
name: httpplugin
port: {plugin_port}
address: 127.0.0.1
nodes: {{cluster: edge}}
auth_service: http
---
kind: Service
name: echo
endpoints: ["{backend}"]
---
kind: AuthPolicy
name: mixed
identity:
  - api_key: {{}}
  - jwt:
      issuer: "{issuer}"
      audiences: [orders]
      jwks: keys/jwks.json
      claims_to_headers: {{sub: x-user-id, tenant: X-Tenant, roles: x-roles}}
---
kind: AuthPolicy
name: native
identity:
  - jwt:
      issuer: "{issuer}"
      audiences: [orders]
      jwks: keys/jwks.json
      claims_to_headers: {{sub: x-user-id, iss: x-issuer}}
---
kind: AuthPolicy
name: team
identity: [{{custom: {{plugin: "waypost_test_plugins:team_token"}}}}]
---
kind: Consumer
name: acme
api_keys: ["{key}"]
---
kind: Route
name: mixed
gateway: edge
match: {{prefix: /mixed}}
backend: echo
auth: mixed
---
kind: Route
name: native
gateway: edge
match: {{prefix: /native}}
backend: echo
auth: native
---
kind: Route
name: team
gateway: edge
match: {{prefix: /team}}
backend: echo
auth: team
---
kind: Route
name: public
gateway: edge
match: {{prefix: /public}}
backend: echo
---
kind: Route
name: admin
gateway: edge
hosts: [api.example.com]
match: {{prefix: /admin}}
backend: echo
auth: mixed
---
kind: Route
name: catchall
gateway: edge
match: {{prefix: /}}
backend: echo
---
kind: Route
name: team-http
gateway: httpplugin
match: {{prefix: /team}}
backend: echo
auth: team
---
kind: Route
name: mixed-http-plugin
gateway: httpplugin
match: {{prefix: /mixed}}
backend: echo
auth: mixed
---
kind: Route
name: mixed-http
gateway: edgehttp
match: {{prefix: /mixed}}
backend: echo
auth: mixed
"""

IDENTITY = ("x-user-id", "x-tenant", "x-roles", "x-issuer", "x-waypost-consumer", "x-waypost-team")
FORGED = [
    ("x-user-id", "forged-admin"),
    ("X-User-Id", "forged-admin-2"),  # a second value, in another case
    ("x-tenant", "forged"),
    ("x-roles", "admin"),
    ("x-issuer", "https://evil.test"),
    ("x-waypost-consumer", "root"),
    ("X-WAYPOST-TEAM", "z"),
]


@pytest.fixture
async def stack(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> dict[str, Any]:
    backend = await echo_backend("echo")
    signer = Signer.new()
    grpc_port, http_port, plugin_port = free_ports(3)
    policies = tmp_path / "policies"
    (policies / "keys").mkdir(parents=True)
    (policies / "keys" / "jwks.json").write_text(signer.jwks())
    (policies / "policy.yaml").write_text(
        POLICY.format(
            grpc_port=grpc_port,
            http_port=http_port,
            plugin_port=plugin_port,
            backend=backend.address,
            issuer=ISSUER,
            key=key_hash(KEYS["acme"]),
        )
    )
    waypost = await asyncio.to_thread(
        start_waypost,
        policies,
        env={"PYTHONPATH": os.pathsep.join([str(SRC_DIR), str(PLUGIN_DIR)])},
    )
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port, node_cluster="edge")
    await asyncio.to_thread(envoy.wait_for_listener, grpc_port)
    await asyncio.to_thread(envoy.wait_for_listener, http_port)
    await asyncio.to_thread(envoy.wait_for_listener, plugin_port)

    def in_sync() -> bool:
        nodes = waypost.status()["nodes"]
        return bool(nodes) and all(t["in_sync"] for node in nodes for t in node["types"].values())

    # Listeners up is not enough: the decision clusters and routes must be acked too.
    await asyncio.to_thread(wait_until, in_sync, 20, 0.1, message="envoy in sync")
    return {"grpc": grpc_port, "http": http_port, "plugin": plugin_port, "signer": signer, "envoy": envoy}


def identity_seen(body: Any) -> dict[str, str]:
    return {k: v for k, v in body["headers"].items() if k in IDENTITY}


async def test_forged_identity_headers_never_reach_the_backend(stack: dict[str, Any]) -> None:
    signer: Signer = stack["signer"]
    key = [("x-api-key", KEYS["acme"])]

    def bearer(**claims: Any) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {signer.token(**claims)}")]

    cases: list[tuple[str, str, list[tuple[str, str]], dict[str, str]]] = [
        # (gateway, path, credentials, the identity headers the backend must see: exactly these)
        ("grpc", "/mixed/1", key, {"x-waypost-consumer": "acme"}),
        ("grpc", "/mixed/1", bearer(), {"x-waypost-consumer": "alice", "x-user-id": "alice"}),
        (
            "grpc",
            "/mixed/1",
            bearer(tenant="t1", roles=["r"]),
            {"x-waypost-consumer": "alice", "x-user-id": "alice", "x-tenant": "t1", "x-roles": "r"},
        ),
        ("http", "/mixed/1", key, {"x-waypost-consumer": "acme"}),
        ("http", "/mixed/1", bearer(), {"x-waypost-consumer": "alice", "x-user-id": "alice"}),
        # Native (jwt_authn): the claims it maps, nothing a client sent.
        (
            "grpc",
            "/native/1",
            bearer(),
            {"x-waypost-consumer": "alice", "x-user-id": "alice", "x-issuer": ISSUER},
        ),
        # A plugin identifies the caller: its header, nothing forged.
        (
            "grpc",
            "/team/1",
            [("x-team-token", "let-me-in")],
            {"x-waypost-consumer": "team-a", "x-waypost-team": "a"},
        ),
        # `auth_service: http` with a plugin route: the gateway decides over gRPC (named per route).
        (
            "plugin",
            "/team/1",
            [("x-team-token", "let-me-in")],
            {"x-waypost-consumer": "team-a", "x-waypost-team": "a"},
        ),
        ("plugin", "/mixed/1", key, {"x-waypost-consumer": "acme"}),
        # No auth at all.
        ("grpc", "/public/1", [], {}),
        ("grpc", "/anything", [], {}),
    ]
    tried = 0
    for gateway, path, credentials, expected in cases:
        for forged in ([*FORGED], FORGED[:1], FORGED[::-1]):
            status, body = await _request(stack[gateway], path, credentials + forged)
            tried += 1
            assert status == 200, (gateway, path, forged, status, body)
            assert identity_seen(body) == expected, (gateway, path, forged, body["headers"])
    assert tried == 3 * len(cases)


async def _request(
    port: int, path: str, headers: list[tuple[str, str]], host: str = "test"
) -> tuple[int, Any]:
    async with KeepAliveClient(port, authority=host) as client:
        status, raw = await client.get(path, headers)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


async def test_underscore_headers_are_refused(stack: dict[str, Any]) -> None:
    key = [("x-api-key", KEYS["acme"])]
    for path in ("/mixed/1", "/public/1", "/native/1"):
        for name in ("x_user_id", "x_waypost_consumer", "x-user_id", "_", "x_api_key"):
            status, _ = await _request(stack["grpc"], path, [*key, (name, "forged")])
            assert status == 400, (path, name, status)
    # Without an underscore, the same request passes.
    assert (await _request(stack["grpc"], "/mixed/1", key))[0] == 200


HOSTS_TO_ADMIN = [
    "api.example.com",
    "API.EXAMPLE.COM",
    "Api.Example.Com.",
    "api.example.com.",
    "api.example.com:",
    "api.example.com.:",
    "api.example.com:80",
    "api.example.com.:8443",
    "api.example.com:0",
    "api.example.com:65535",
    "api.example.com:00080",
]
"""Spellings of the host that must land on its virtual host (401 without a key), never on `*`."""


async def test_host_spellings_cannot_skip_a_host_scoped_route(stack: dict[str, Any]) -> None:
    for host in HOSTS_TO_ADMIN:
        status, body = await _request(stack["grpc"], "/admin/users", [], host=host)
        assert status == 401, (host, status, body)
        status, body = await _request(stack["grpc"], "/admin/users", [("x-api-key", KEYS["acme"])], host=host)
        assert status == 200 and body["headers"]["x-waypost-consumer"] == "acme", (host, status)
    # Spellings Envoy does not normalize must not reach the catch-all as the admin host either:
    # they are refused, or they are another host (and the catch-all is what that host serves).
    for host in ("api.example.com..", "api.example.com:abc", "api.example.com:-1", "[api.example.com]"):
        status, body = await _request(stack["grpc"], "/admin/users", [], host=host)
        assert status in (400, 401, 404) or body["headers"]["host"] != "api.example.com", (host, status)
