"""Which routes Envoy enforces natively (jwt_authn + rbac): the strict eligibility rule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from waypost.policies.loader import load_policies
from waypost.xds.compiler.jwt_native import native_routes

JWKS = (Path(__file__).parent / "spec_examples" / "keys" / "jwks.json").read_text()

BASE = """
kind: Gateway
name: public
port: 8080
---
kind: Service
name: orders
endpoints: ["10.0.0.5:9001"]
---
kind: Route
name: orders
gateway: public
match: {prefix: /v1/orders}
backend: orders
auth: orders-jwt
---
kind: AuthPolicy
name: orders-jwt
identity:
  - jwt: {issuer: https://issuer.example.com, jwks: keys/jwks.json, claims_to_headers: {sub: x-user-id}}
rules:
  - deny: {paths: ["/v1/orders/admin"]}
  - allow: {roles: [admin]}
  - allow: {methods: [GET], scopes: ["orders:read"]}
"""

CONSUMER = "---\nkind: Consumer\nname: acme\n"


def native(tmp_path: Path, text: str, jwks: str = JWKS) -> bool:
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "jwks.json").write_text(jwks)
    (tmp_path / "policy.yaml").write_text(text)
    return "orders" in native_routes(load_policies(tmp_path))


def test_plain_jwt_policy_is_native(tmp_path: Path) -> None:
    assert native(tmp_path, BASE + CONSUMER + 'api_keys: ["sha256:' + "0" * 64 + '"]\n')


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("rules:", "mode: dry_run\nrules:"),
        ("  - allow: {roles: [admin]}", "  - allow: {roles: [admin], when: 'true'}"),
        ("  - jwt:", "  - api_key: {}\n  - jwt:"),
        ("jwks: keys/jwks.json", "jwks: https://issuer.example.com/jwks.json"),
        ("{sub: x-user-id}", "{sub: x-user-id, tenant: x-tenant}"),
        ("{sub: x-user-id}", "{sub: x-waypost-consumer}"),
        ('["/v1/orders/admin"]', '["/v1/orders/a b"]'),
        ("auth: orders-jwt", "auth: [orders-jwt, orders-jwt]"),
    ],
)
def test_ineligible_policies(tmp_path: Path, old: str, new: str) -> None:
    assert old in BASE
    assert not native(tmp_path, BASE.replace(old, new))


@pytest.mark.parametrize("consumer", ["plan: gold\n", "roles: [admin]\n", "subscriptions: []\n"])
def test_consumers_that_could_lend_anything_disable_native(tmp_path: Path, consumer: str) -> None:
    assert not native(tmp_path, BASE + CONSUMER + consumer)


def test_consumer_rate_limits_disable_native(tmp_path: Path) -> None:
    limited = BASE.replace("auth: orders-jwt", "auth: orders-jwt\nrate_limit: standard")
    limits = (
        "---\nkind: RateLimitPolicy\nname: standard\nlimits: [{by: consumer, requests: 5, per: second}]\n"
    )
    assert not native(tmp_path, limited + limits)
    assert native(tmp_path, limited + limits.replace("by: consumer", "by: client_ip"))


def test_jwks_with_several_keys_is_not_native(tmp_path: Path) -> None:
    document = json.loads(JWKS)
    document["keys"].append({**document["keys"][0], "kid": "waypost-test-2"})
    assert not native(tmp_path, BASE, json.dumps(document))
