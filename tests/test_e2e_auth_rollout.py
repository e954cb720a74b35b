"""End to end: no auth change opens a route to connections opened before it (issue 12, item 1).

A keep-alive client opens one connection to a real Envoy (default drain time, 600 s) and keeps
probing through each policy change; the connection must stay the same one, and no request on it
may reach a route without the credentials the newest applied policy asks for. Both directions:
adding auth (API key over ext_authz, JWT enforced natively by jwt_authn, a route deny rule) must
refuse on the old connection as soon as Envoy acks the change; removing the last authenticated
route must not refuse public routes (403) on it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from authz_support import ISSUER, KEYS, Signer, key_hash
from support import EchoFactory, EnvoyProcess, WaypostProcess, free_ports
from support.keepalive import ConnectionClosed, KeepAliveClient

pytestmark = pytest.mark.e2e

BASE = """
kind: Gateway
name: edge
port: {port}
address: 127.0.0.1
nodes: {{cluster: edge}}
---
kind: Service
name: echo
endpoints: ["{backend}"]
---
kind: Route
name: open
gateway: edge
match: {{prefix: /open}}
backend: echo
---
kind: AuthPolicy
name: keys
identity: [{{api_key: {{}}}}]
---
kind: AuthPolicy
name: tokens
identity:
  - jwt:
      {{issuer: "{issuer}", audiences: [orders], jwks: keys/jwks.json, claims_to_headers: {{sub: x-user-id}}}}
---
kind: Consumer
name: acme
api_keys: ["{key}"]
---
kind: Route
name: later
gateway: edge
match: {{prefix: /later}}
backend: echo
"""


def later(extra: str, **fill: Any) -> str:
    return BASE.format(**fill) + "".join(f"{line}\n" for line in extra.strip().splitlines())


REFUSED = (401, 403)
STEPS: list[tuple[str, str, dict[str, int | tuple[int, ...]]]] = [
    # (name, what the `later` route adds, expected status per probe on the OLD connection)
    ("api key added", "auth: keys", {"/later": 401, "/later+key": 200, "/open": 200}),
    ("api key removed (last auth route)", "", {"/later": 200, "/open": 200}),
    ("deny rule added", 'deny: [{paths: ["^/later/x"]}]', {"/later/x": 403, "/later": 200, "/open": 200}),
    ("api key and deny", 'auth: keys\ndeny: [{paths: ["^/later/x"]}]', {"/later": 401, "/open": 200}),
    ("all removed", "", {"/later": 200, "/later/x": 200, "/open": 200}),
    # Native JWT last: its providers live in the listener (see jwt_native.JwtAuthnFeature), so
    # these steps replace it and the old connection starts draining. It refuses (403: the
    # requirement its chain lacks) rather than verify with what the old chain knows.
    ("jwt (native) added", "auth: tokens", {"/later": REFUSED, "/open": 200}),
    ("jwt removed", "", {"/later": 200, "/open": 200}),
]
REPLACES_LISTENER = {"jwt (native) added", "jwt removed"}


def synced(waypost: WaypostProcess, version: str | None) -> str | None:
    """The applied policy version once it differs from ``version`` and every Envoy acked it."""
    status = waypost.status()
    current = status["policy"]["version"]
    nodes = status["nodes"]
    if current == version or not nodes:
        return None
    if all(t["in_sync"] for node in nodes for t in node["types"].values()):
        return str(current)
    return None


async def wait_synced(waypost: WaypostProcess, version: str | None, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(synced, waypost, version)
        if found is not None:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"no new version acked: {await asyncio.to_thread(waypost.status)}")


async def test_auth_changes_bind_connections_opened_before_them(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend = await echo_backend("echo")
    signer = Signer.new()
    (port,) = free_ports(1)
    policies = tmp_path / "policies"
    (policies / "keys").mkdir(parents=True)
    (policies / "keys" / "jwks.json").write_text(signer.jwks())
    fill: dict[str, Any] = {"port": port, "backend": backend.address, "issuer": ISSUER}
    fill["key"] = key_hash(KEYS["acme"])
    (policies / "policy.yaml").write_text(later("", **fill))
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port, node_cluster="edge")
    await asyncio.to_thread(envoy.wait_for_listener, port)
    version = await wait_synced(waypost, None)
    credentials = {"key": {"x-api-key": KEYS["acme"]}, "token": {"authorization": f"Bearer {signer.token()}"}}

    async with KeepAliveClient(port) as old:
        status, _ = await old.get("/later")
        assert status == 200
        for name, extra, expected in STEPS:
            modified = await asyncio.to_thread(_listener_modified, envoy)
            (policies / "policy.yaml").write_text(later(extra, **fill))
            # Probe the old connection without credentials while the change rolls out: the answer
            # changes at most once (no flapping between an old and a new chain).
            seen: list[bool] = []
            task = asyncio.create_task(wait_synced(waypost, version))
            while not task.done():
                try:
                    status, _ = await old.get("/later")
                except ConnectionClosed:
                    assert name in REPLACES_LISTENER, name
                    await task
                    break
                if not seen or seen[-1] != (status in REFUSED):
                    seen.append(status in REFUSED)
                assert len(seen) <= 2, f"{name}: flapped between refusing and passing: {seen}"
                await asyncio.sleep(0.01)
            version = task.result()
            for probe, want in expected.items():
                path, _, cred = probe.partition("+")
                allowed = want if isinstance(want, tuple) else (want,)
                if old.reusable:
                    try:
                        status, body = await old.get(path, credentials.get(cred))
                        assert status in allowed, (name, probe, status, body[:200])
                    except ConnectionClosed:
                        assert name in REPLACES_LISTENER, name
                fresh, _ = await _fresh_get(port, path, credentials.get(cred))
                assert fresh in allowed, (name, probe, "fresh connection", fresh)
            # The valid JWT works on a fresh connection whenever `later` asks for it.
            if "tokens" in extra:
                assert (await _fresh_get(port, "/later", credentials["token"]))[0] == 200
            if name not in REPLACES_LISTENER:
                # The listener was not replaced, so nothing drains: the change reached the old
                # connection through the route table alone.
                assert await asyncio.to_thread(_listener_modified, envoy) == modified, name
                assert old.reusable, name
    assert old.requests > 3 * len(STEPS)


def _listener_modified(envoy: EnvoyProcess) -> int:
    return envoy.stats("listener_manager").get("listener_manager.listener_modified", 0)


async def _fresh_get(port: int, path: str, headers: dict[str, str] | None) -> tuple[int, bytes]:
    async with KeepAliveClient(port) as client:
        return await client.get(path, headers)


def test_keepalive_client_reports_a_closed_connection() -> None:
    async def run() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            body = json.dumps({"ok": True}).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, KeepAliveClient(port) as client:
            assert (await client.get("/"))[0] == 200
            with pytest.raises(ConnectionClosed):
                await client.get("/")

    asyncio.run(run())


@pytest.mark.parametrize(("auth_service", "failure_mode"), [("grpc", "closed"), ("http", "open")])
async def test_public_routes_need_no_decision_service(
    auth_service: str,
    failure_mode: str,
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    """Every gateway carries ext_authz now; with no authenticated route waypost sends no decision
    cluster, and the filter (off on every route) never needs it, whatever the failure mode."""
    backend = await echo_backend("echo")
    (port,) = free_ports(1)
    policies = tmp_path / "policies"
    (policies / "keys").mkdir(parents=True)
    (policies / "keys" / "jwks.json").write_text(Signer.new().jwks())
    text = later("", port=port, backend=backend.address, issuer=ISSUER, key=key_hash(KEYS["acme"]))
    text = text.replace(
        "nodes: {cluster: edge}",
        f"nodes: {{cluster: edge}}\nauth_service: {auth_service}\nauth_failure_mode: {failure_mode}",
    )
    (policies / "policy.yaml").write_text(text)
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port, node_cluster="edge")
    await asyncio.to_thread(envoy.wait_for_listener, port)
    for path in ("/open", "/later"):
        assert (await _fresh_get(port, path, None))[0] == 200
    clusters = json.dumps(await asyncio.to_thread(envoy.config_dump, resource="dynamic_active_clusters"))
    assert "waypost_authz" not in clusters
