"""End to end: AuthPolicy and Consumer through a real Envoy calling waypost's ext_authz Check.

One stack (echo backend, `waypost serve` running its decision service, Envoy bootstrapped with only
the xDS address) and many assertions: each outcome of the spec, JWT attacks, forged identity
headers, path tricks, plugins, dry run, hot reload of keys and subscriptions, and finally the
decision service going away (fail closed).
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from authz_support import KEYS, PLUGIN_DIR, Signer, consumers_yaml, key_hash, policy_yaml, write_pki
from support import EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until, free_ports
from support.procs import SRC_DIR
from waypost.contract import AUTHZ_CLUSTER, AUTHZ_HTTP_CLUSTER

pytestmark = pytest.mark.e2e


@pytest.fixture
def envoy_factory(start_envoy: Callable[..., EnvoyProcess]) -> Callable[[int], EnvoyProcess]:
    """An Envoy bootstrapped with only the xDS address: the decision clusters arrive over CDS."""

    def start(xds_port: int) -> EnvoyProcess:
        return start_envoy(xds_port=xds_port, node_cluster="edge")

    return start


async def raw_get(port: int, path: str, **headers: str) -> tuple[int, str]:
    """A GET with the request target exactly as given (HTTP clients normalize dot segments)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", "host: test", "connection: close"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = (await asyncio.wait_for(reader.read(), 5)).decode(errors="replace")
    writer.close()
    return int(raw.split(" ", 2)[1]), raw


@pytest.mark.parametrize("transport", ["grpc", "http"])
async def test_authz_end_to_end(
    transport: str,
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    envoy_factory: Callable[[int], EnvoyProcess],
) -> None:
    backend = await echo_backend("orders")
    signer = Signer.new()
    port, plugins_port = free_ports(2)
    policies = tmp_path / "policies"
    (policies / "keys").mkdir(parents=True)
    (policies / "keys" / "jwks.json").write_text(signer.jwks())
    (policies / "policy.yaml").write_text(
        policy_yaml(port, backend.address, auth_service=transport, plugins_port=plugins_port)
    )
    (policies / "consumers.yaml").write_text(consumers_yaml())
    waypost = await asyncio.to_thread(
        start_waypost,
        policies,
        env={"PYTHONPATH": os.pathsep.join([str(SRC_DIR), str(PLUGIN_DIR)])},
    )
    envoy = await asyncio.to_thread(envoy_factory, waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, port)
    await asyncio.to_thread(envoy.wait_for_listener, plugins_port)
    base = f"http://127.0.0.1:{port}"

    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:

        async def call(path: str, method: str = "GET", **headers: str) -> httpx.Response:
            on_plugins = path.startswith(("/v1/team", "/v1/crash"))
            url = (f"http://127.0.0.1:{plugins_port}" if on_plugins else base) + path
            return await client.request(
                method, url, headers={k.replace("_", "-"): v for k, v in headers.items()}
            )

        def denial(response: httpx.Response, status: int, reason: str | None = None) -> None:
            assert response.status_code == status, (response.status_code, response.text)
            body = response.json()
            assert set(body) == {"error", "reason"}, body
            if reason is not None:
                assert body["reason"] == reason, body

        # --- 401: no credential, or a bad one, with www-authenticate ---------------------------
        missing = await call("/v1/orders/1")
        denial(missing, 401, "missing credentials")
        assert 'ApiKey header="x-api-key"' in missing.headers["www-authenticate"]
        assert "Bearer" in missing.headers["www-authenticate"]
        # HEAD denials (no body) leave the connection to the decision service usable.
        for _ in range(3):
            head = await call("/v1/orders/1", "HEAD")
            assert head.status_code == 401 and head.content == b""
        bad_key = await call("/v1/orders/1", x_api_key="wrong")
        denial(bad_key, 401, "invalid api key")
        assert "www-authenticate" in bad_key.headers

        # --- allowed: consumer header to the upstream, forged identity headers removed -----------
        allowed = await call(
            "/v1/orders/1", x_api_key=KEYS["acme"], x_waypost_consumer="root", x_waypost_x="1"
        )
        assert allowed.status_code == 200, allowed.text
        seen = allowed.json()["headers"]
        assert seen["x-waypost-consumer"] == "acme"
        assert "x-waypost-x" not in seen
        assert "x-api-key" in seen  # the credential itself is the upstream's business
        # CONTRACT with rate limits: consumer and plan as ext_authz dynamic metadata.
        assert seen["x-meta-consumer"] == "acme" and seen["x-meta-plan"] == "gold"
        # A route without auth cannot be handed a forged identity either.
        public = await call("/v1/public/x", x_waypost_consumer="root")
        assert public.status_code == 200 and "x-waypost-consumer" not in public.json()["headers"]

        # --- 403: known caller, no rule; subscriptions ------------------------------------------
        denial(await call("/v1/orders/1", "POST", x_api_key=KEYS["acme"]), 403, "no rule allows this request")
        denial(await call("/v1/orders/1", x_api_key=KEYS["bob"]), 403, "no rule allows this request")
        denial(await call("/v1/payments/1", x_api_key=KEYS["acme"]), 403, "subscription pending approval")
        denial(await call("/v1/orders/1", x_api_key=KEYS["carol"]), 403, "subscription revoked")

        # --- JWT ---------------------------------------------------------------------------------
        admin = await call("/v1/orders/1", "DELETE", authorization=f"Bearer {signer.token(roles=['admin'])}")
        assert admin.status_code == 200, admin.text
        assert admin.json()["headers"]["x-waypost-consumer"] == "alice"
        assert admin.json()["headers"]["x-user-id"] == "alice"
        reader = signer.token(sub="rita", scope="orders:read")
        assert (await call("/v1/orders/1", authorization=f"Bearer {reader}")).status_code == 200
        denial(await call("/v1/orders/1", "POST", authorization=f"Bearer {reader}"), 403)
        for attack, token in signer.attacks().items():
            response = await call("/v1/orders/1", "DELETE", authorization=f"Bearer {token}")
            assert response.status_code == 401, (attack, response.status_code, response.text)
            assert 'error="invalid_token"' in response.headers["www-authenticate"], attack

        # --- path tricks cannot dodge the deny rule or reach a neighbour (sent raw: no client-side
        # normalization) ---------------------------------------------------------------------------
        root = f"Bearer {signer.token(roles=['admin'])}"
        tricks = {
            "/v1/orders/admin": 403,
            "//v1/orders/admin": 403,
            "/v1/orders/./admin": 403,
            "/v1/orders/admin/users": 403,
            "/v1/orders/admin/../admin": 403,
            "/v1/public/../orders/admin": 403,
            "/v1/public/%2e%2e/orders/admin": 403,
            "/v1/orders/../admin": 404,
            "/v1/orders/%2e%2e/admin": 404,
            "/v1/orders/%2E%2E/admin": 404,
            "/V1/ORDERS/ADMIN": 404,
        }
        for path, expected in tricks.items():
            status, raw = await raw_get(port, path, authorization=root)
            assert status == expected, (path, status, raw)
        # The control: the same caller may use the route itself.
        assert (await raw_get(port, "/v1/orders/1", authorization=root))[0] == 200

        # --- custom plugins ------------------------------------------------------------------------
        team = await call("/v1/team/1", x_team_token="let-me-in")
        assert team.status_code == 200, team.text
        assert team.json()["headers"]["x-waypost-consumer"] == "team-a"
        assert team.json()["headers"]["x-waypost-team"] == "a"
        denial(await call("/v1/team/1", x_team_token="nope"), 401, "bad team token")
        denial(await call("/v1/team/1"), 401, "missing credentials")
        denial(await call("/v1/crash/1", x_anything="1"), 500, "auth plugin failed")

        # --- dry run: decided and logged, never blocked ----------------------------------------------
        dry = await call("/v1/dry/1")
        assert dry.status_code == 200 and "x-waypost-consumer" not in dry.json()["headers"]

        # --- hot reload: a new key, a revoked and an approved subscription, within 2 s ---------------
        dave_key = "dave-fresh-key"
        extra = f'---\nkind: Consumer\nname: dave\nplan: gold\napi_keys: ["{key_hash(dave_key)}"]\n'
        (policies / "consumers.yaml").write_text(
            consumers_yaml(acme_orders="revoked", acme_payments="approved", extra=extra)
        )

        async def reloaded() -> bool:
            return (
                (await call("/v1/orders/1", x_api_key=dave_key)).status_code == 200
                and (await call("/v1/orders/1", x_api_key=KEYS["acme"])).status_code == 403
                and (await call("/v1/payments/1", x_api_key=KEYS["acme"])).status_code == 200
            )

        # No timed assertion (the machine is shared): the watcher debounces 0.25 s and a reload of
        # this directory takes well under a second when the machine is idle.
        await async_wait_until(reloaded, timeout=15, interval=0.05)

    # --- metrics: every decision counted ---------------------------------------------------------------
    allowed_count = await asyncio.to_thread(
        waypost.metric, "waypost_authz_decisions_total", route="orders", decision="allow"
    )
    denied_count = await asyncio.to_thread(
        waypost.metric, "waypost_authz_decisions_total", route="orders", decision="deny"
    )
    assert allowed_count and allowed_count >= 3 and denied_count and denied_count >= 10
    assert await asyncio.to_thread(
        waypost.metric, "waypost_authz_decisions_total", route="dry", decision="dry_run_deny"
    )

    # --- the transport under test really carried the public gateway's decisions --------------------
    stats = await asyncio.to_thread(envoy.stats, "upstream_rq_total")
    used = AUTHZ_HTTP_CLUSTER if transport == "http" else AUTHZ_CLUSTER
    assert stats[f"cluster.{used}.upstream_rq_total"] > 20, stats
    if transport == "http":
        # gRPC only for the plugins gateway (one connection, a handful of calls).
        assert stats[f"cluster.{AUTHZ_CLUSTER}.upstream_rq_total"] < 10, stats

    # --- the decision service goes away: fail closed, routes without auth unaffected -------------------
    await asyncio.to_thread(waypost.stop)
    async with httpx.AsyncClient(trust_env=False, timeout=5) as client:
        down = await client.get(f"{base}/v1/orders/1", headers={"x-api-key": dave_key})
        assert down.status_code == 503, down.text
        assert (await client.get(f"{base}/v1/public/1")).status_code == 200


async def test_mtls_identity_through_envoy(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    envoy_factory: Callable[[int], EnvoyProcess],
) -> None:
    backend = await echo_backend("billing")
    policies = tmp_path / "policies"
    pki = write_pki(policies / "certs")
    port = free_ports(1)[0]
    (policies / "policy.yaml").write_text(f"""
kind: Gateway
name: secure
port: {port}
address: 127.0.0.1
auth_service: http   # mtls needs the peer certificate: this gateway stays on gRPC regardless
tls: {{cert: certs/server.pem, key: certs/server-key.pem, client_ca: certs/ca.pem}}
---
kind: Service
name: billing
endpoints: ["{backend.address}"]
---
kind: Route
name: billing
gateway: secure
match: {{prefix: /}}
backend: billing
auth: certs
---
kind: AuthPolicy
name: certs
identity: [{{mtls: {{}}}}]
rules: [{{allow: {{roles: [ops]}}}}]
---
kind: Consumer
name: billing
roles: [ops]
""")
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = await asyncio.to_thread(envoy_factory, waypost.xds_port)
    await asyncio.to_thread(envoy.wait_for_listener, port)

    def client(label: str) -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=str(pki["ca"]))
        context.load_cert_chain(str(pki[label]), str(pki[f"{label}-key"]))
        return httpx.AsyncClient(trust_env=False, timeout=5, verify=context)

    async with client("billing") as billing:
        response = await billing.get(
            f"https://127.0.0.1:{port}/invoices", headers={"x-waypost-consumer": "root"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["headers"]["x-waypost-consumer"] == "billing"
    async with client("stranger") as stranger:
        response = await stranger.get(f"https://127.0.0.1:{port}/invoices")
        assert response.status_code == 403 and response.json()["reason"] == "no rule allows this request"
