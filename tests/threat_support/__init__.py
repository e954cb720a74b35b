"""Shared material of the threat-protection tests: the policy, its schema files, the stack."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from websockets.asyncio.server import Server, ServerConnection, serve

from authz_support import KEYS, key_hash
from support import EchoFactory, EchoServer, EnvoyProcess, WaypostProcess, free_ports

__all__ = ["Stack", "start_stack", "write_policies"]

HERE = Path(__file__).parent


def write_policies(
    directory: Path, *, port: int, backend: str, ws_backend: str, screen_mode: str = "block"
) -> Path:
    (directory / "schemas").mkdir(parents=True, exist_ok=True)
    for name in ("item.json", "query.json", "pets.json"):
        shutil.copy(HERE / name, directory / "schemas" / name)
    (directory / "policy.yaml").write_text(
        f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
---
kind: Service
name: echo
endpoints: ["{backend}"]
---
kind: Service
name: ws
endpoints: ["{ws_backend}"]
---
kind: AuthPolicy
name: keys
identity: [{{api_key: {{header: x-api-key}}}}]
---
kind: Consumer
name: acme
api_keys: ["{key_hash(KEYS["acme"])}"]
---
kind: Route
name: orders-v1
gateway: public
match:
  prefix: /v1/orders
  methods: [GET, POST]
  headers: {{x-canary: "true"}}
backend: echo
cors:
  origins: ["https://app.example.com"]
  methods: [GET, POST]
  headers: [authorization, x-custom]
  max_age: 1h
  credentials: true
---
kind: Route
name: items
gateway: public
match: {{path: /items, methods: [POST]}}
backend: echo
validation:
  json_schema: schemas/item.json
  query_schema: schemas/query.json
  headers: [x-request-id-client]
  max_body_bytes: 4096
---
kind: Route
name: pets
gateway: public
match: {{prefix: /pets}}
backend: echo
validation: {{openapi: schemas/pets.json}}
---
kind: Route
name: plain
gateway: public
match: {{prefix: /plain}}
backend: echo
---
kind: Route
name: screened
gateway: public
match: {{prefix: /screened}}
backend: echo
screen: {{body: true, headers: [user-agent, referer, x-search]}}
---
kind: Route
name: watched
gateway: public
match: {{prefix: /watched}}
backend: echo
screen: {{mode: log, body: true, headers: [x-search]}}
---
kind: Route
name: chat
gateway: public
match: {{prefix: /chat}}
backend: ws
websocket: true
auth: keys
"""
    )
    return directory


async def _ws_echo(connection: ServerConnection) -> None:
    async for message in connection:
        await connection.send(f"echo:{message}")


@dataclass
class Stack:
    backend: EchoServer
    ws_server: Server
    port: int
    waypost: WaypostProcess
    envoy: EnvoyProcess

    async def close(self) -> None:
        self.ws_server.close()
        await self.ws_server.wait_closed()


async def start_stack(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> Stack:
    """Echo and WebSocket backends, `waypost serve` (which runs the decision service the body
    checks need), and an Envoy."""
    backend = await echo_backend("echo")
    ws_server = await serve(_ws_echo, "127.0.0.1", 0)
    ws_port = next(iter(ws_server.sockets)).getsockname()[1]
    (port,) = free_ports(1)
    policies = write_policies(
        tmp_path / "policies", port=port, backend=backend.address, ws_backend=f"127.0.0.1:{ws_port}"
    )
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, port)
    return Stack(backend, ws_server, port, waypost, envoy)
