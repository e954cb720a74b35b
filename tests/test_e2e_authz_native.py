"""End to end: a JWT-only AuthPolicy enforced by Envoy itself (jwt_authn + rbac), no decision call.

The waypost decision service does not run and Envoy has no cluster to reach it: every outcome
below comes from Envoy alone. Each request is also decided by waypost's own decision core
(in-process, the code behind the Check service) and the two answers are compared: status,
JSON body, ``content-type``, ``www-authenticate``, and the identity headers the upstream sees.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from authz_support import ISSUER, Signer
from support import EchoFactory, EnvoyProcess, WaypostProcess, free_port
from waypost.filters.authz.core import AuthRequest, AuthzCore, Decision
from waypost.policies.loader import load_policies
from waypost.xds.compiler.jwt_native import native_routes

pytestmark = pytest.mark.e2e


async def raw_get(port: int, path: str, **headers: str) -> tuple[int, str]:
    """A GET with the request target exactly as given."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", "host: test", "connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = (await asyncio.wait_for(reader.read(), 5)).decode(errors="replace")
    writer.close()
    return int(raw.split(" ", 2)[1]), raw


def native_policy_yaml(port: int, backend: str) -> str:
    return f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
nodes: {{cluster: edge}}
---
kind: Service
name: echo
endpoints: ["{backend}"]
---
kind: Route
name: orders
gateway: public
match: {{prefix: /v1/orders}}
backend: echo
auth: orders-jwt
---
kind: AuthPolicy
name: orders-jwt
identity:
  - jwt:
      issuer: {ISSUER}
      audiences: [orders]
      jwks: keys/jwks.json
      claims_to_headers: {{sub: x-user-id, iss: x-issuer}}
rules:
  - allow: {{roles: [root]}}
  - deny: {{paths: ["/v1/orders/admin"]}}
  - allow: {{roles: [admin]}}
  - allow: {{methods: [GET], scopes: ["orders:read"]}}
"""


# Reasons Envoy cannot tell apart (same status, body shape and www-authenticate; documented in
# jwt_native): a known kid with an algorithm its key does not admit, and an unsigned token.
KNOWN_REASON_DIFFERENCES = {
    "HS256 with the RSA public key": "invalid token: unknown signing key",
    "alg none": "invalid token: malformed",
}


async def test_jwt_policy_enforced_natively(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend = await echo_backend("orders")
    signer = Signer.new()
    port = free_port()
    policies = tmp_path / "policies"
    (policies / "keys").mkdir(parents=True)
    (policies / "keys" / "jwks.json").write_text(signer.jwks())
    (policies / "policy.yaml").write_text(native_policy_yaml(port, backend.address))
    policy = load_policies(policies)
    assert set(native_routes(policy)) == {"orders"}
    core = AuthzCore()
    core.apply(policy)

    waypost = await asyncio.to_thread(start_waypost, policies)  # no --authz-port: no decision service
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port, node_cluster="edge")
    await asyncio.to_thread(envoy.wait_for_listener, port)

    now = int(time.time())
    bearer = "Bearer {}".format
    admin = signer.token(roles=["admin"])
    cases: dict[str, tuple[str, str, dict[str, str]]] = {
        "admin, forged identity headers": (
            "DELETE",
            "/v1/orders/1",
            {"authorization": bearer(admin), "x-waypost-consumer": "root", "x-user-id": "mallory"},
        ),
        "lowercase scheme": ("DELETE", "/v1/orders/1", {"authorization": f"bearer {admin}"}),
        "role as a string": (
            "DELETE",
            "/v1/orders/1",
            {"authorization": bearer(signer.token(roles="admin"))},
        ),
        "scope string, GET": (
            "GET",
            "/v1/orders/1",
            {"authorization": bearer(signer.token(scope="a orders:read"))},
        ),
        "scp list, GET": (
            "GET",
            "/v1/orders/1",
            {"authorization": bearer(signer.token(scp=["orders:read"]))},
        ),
        "scope, POST": ("POST", "/v1/orders/1", {"authorization": bearer(signer.token(scope="orders:read"))}),
        "no role": ("DELETE", "/v1/orders/1", {"authorization": bearer(signer.token(roles=["reader"]))}),
        "deny rule first": ("GET", "/v1/orders/admin/users", {"authorization": bearer(admin)}),
        "allow rule before the deny": (
            "GET",
            "/v1/orders/admin",
            {"authorization": bearer(signer.token(sub="ops", roles=["root"]))},
        ),
        "roles list": (
            "DELETE",
            "/v1/orders/1",
            {"authorization": bearer(signer.token(roles=["x", "admin"]))},
        ),
        "iat in the future": (
            "GET",
            "/v1/orders/1",
            {"authorization": bearer(signer.token(iat=now + 3600, roles=["admin"]))},
        ),
        "missing token": ("GET", "/v1/orders/1", {}),
        "another scheme": ("GET", "/v1/orders/1", {"authorization": "Basic YWxpY2U6eA=="}),
        "no subject": (
            "GET",
            "/v1/orders/1",
            {"authorization": bearer(signer.token(sub=None, roles=["admin"]))},
        ),
        "no exp": ("GET", "/v1/orders/1", {"authorization": bearer(signer.token(exp=None, roles=["admin"]))}),
        "expired within leeway": (
            "GET",
            "/v1/orders/1",
            {"authorization": bearer(signer.token(exp=now - 5, roles=["admin"]))},
        ),
        **{
            attack: ("DELETE", "/v1/orders/1", {"authorization": bearer(token)})
            for attack, token in signer.attacks().items()
        },
    }

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=5) as client:
        for name, (method, path, headers) in cases.items():
            response = await client.request(method, path, headers=headers)
            expected = core.decide(
                AuthRequest(
                    route="orders", policies=("orders-jwt",), method=method, path=path, headers=headers
                )
            )
            assert isinstance(expected, Decision)
            assert response.status_code == expected.status, (name, response.status_code, response.text)
            if expected.allowed:
                seen = response.json()["headers"]
                identity = {
                    k: v for k, v in seen.items() if k in ("x-waypost-consumer", "x-user-id", "x-issuer")
                }
                assert identity == dict(expected.headers), (name, seen)
                continue
            reason = KNOWN_REASON_DIFFERENCES.get(name, expected.reason)
            wanted = expected.body.replace(expected.reason.encode(), reason.encode())
            assert response.content == wanted, (name, response.text)
            sent = dict(expected.headers)
            assert response.headers["content-type"] == sent["content-type"], name
            assert response.headers.get("www-authenticate") == sent.get("www-authenticate"), name

    # Path tricks, sent raw (HTTP clients normalize them away): the deny rule still holds.
    for path in ("/v1/orders/%61dmin", "/v1/orders/x/../admin", "//v1/orders//admin", "/v1/orders/%2e/admin"):
        status, raw = await raw_get(port, path, authorization=bearer(admin))
        assert status == 403 and '"denied by rule"' in raw, (path, raw)

    # Nothing asked a decision service: the gateway's ext_authz filter is off on every route.
    calls = envoy.stats("http.public.ext_authz")
    assert calls and not any(v for k, v in calls.items() if not k.endswith(".disabled")), calls
