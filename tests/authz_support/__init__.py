"""Shared material of the authz tests: keys, tokens, and the policy they run against."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

PLUGIN_DIR = Path(__file__).parent
ISSUER = "https://issuer.test"
KID = "k1"

KEYS = {"acme": "acme-secret-key", "bob": "bob-secret-key", "carol": "carol-secret-key"}


def key_hash(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@dataclass
class Signer:
    private_key: rsa.RSAPrivateKey

    @classmethod
    def new(cls) -> Signer:
        return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))

    def jwks(self) -> str:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private_key.public_key()))
        public.update(kid=KID, use="sig", alg="RS256")
        return json.dumps({"keys": [public]})

    def public_pem(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def token(self, *, kid: str = KID, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": "orders", "sub": "alice", "iat": now, "exp": now + 300}
        claims.update(overrides)
        claims = {k: v for k, v in claims.items() if v is not None}
        return jwt.encode(claims, self.private_key, algorithm="RS256", headers={"kid": kid})

    def attacks(self) -> dict[str, str]:
        """Tokens that must all be refused with 401."""
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": "orders", "sub": "mallory", "exp": now + 300, "roles": ["admin"]}
        valid = self.token(sub="mallory", roles=["admin"])
        head, _, sig = valid.split(".")
        tampered_body = _b64(json.dumps({**claims, "sub": "root"}).encode())
        return {
            "alg none": _unsigned({"alg": "none", "typ": "JWT", "kid": KID}, claims),
            "HS256 with the RSA public key": _hs256(self.public_pem(), claims),
            "expired": self.token(exp=now - 3600, iat=now - 7200, roles=["admin"]),
            "wrong audience": self.token(aud="payments", roles=["admin"]),
            "wrong issuer": self.token(iss="https://evil.test", roles=["admin"]),
            "bad signature": f"{head}.{tampered_body}.{sig}",
            "unknown kid": self.token(kid="nope", roles=["admin"]),
            "not yet valid": self.token(nbf=now + 3600, roles=["admin"]),
            "garbage": "not.a.jwt",
        }


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def _hs256(secret: bytes, claims: dict[str, Any]) -> str:
    header = {"alg": "HS256", "typ": "JWT", "kid": KID}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def consumers_yaml(*, acme_orders: str = "approved", acme_payments: str = "pending", extra: str = "") -> str:
    return f"""
kind: Consumer
name: acme
plan: gold
roles: [reader]
labels: {{tenant: acme}}
api_keys: ["{key_hash(KEYS["acme"])}"]
subscriptions:
  - {{route: orders, status: {acme_orders}}}
  - {{route: payments, status: {acme_payments}}}
---
kind: Consumer
name: bob
plan: free
api_keys: ["{key_hash(KEYS["bob"])}"]
---
kind: Consumer
name: carol
plan: gold
api_keys: ["{key_hash(KEYS["carol"])}"]
subscriptions: [{{route: orders, status: revoked}}]
{extra}"""


def policy_yaml(
    port: int,
    backend: str,
    *,
    failure_mode: str = "closed",
    auth_service: str = "grpc",
    plugins_port: int = 0,
) -> str:
    """The e2e policy: gateway `public` (api keys, JWT; over ``auth_service``) and gateway
    `plugins` (custom plugins, always gRPC)."""
    return f"""
kind: Gateway
name: public
port: {port}
address: 127.0.0.1
nodes: {{cluster: edge}}
auth_failure_mode: {failure_mode}
auth_service: {auth_service}
---
kind: Gateway
name: plugins
port: {plugins_port or port + 1}
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
auth: orders-auth
request_headers:
  add: {{x-meta-consumer: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:consumer)%",
         x-meta-plan: "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:plan)%"}}
---
kind: Route
name: payments
gateway: public
match: {{prefix: /v1/payments}}
backend: echo
auth: orders-auth
---
kind: Route
name: public
gateway: public
match: {{prefix: /v1/public}}
backend: echo
---
kind: Route
name: team
gateway: plugins
match: {{prefix: /v1/team}}
backend: echo
auth: team-auth
---
kind: Route
name: crash
gateway: plugins
match: {{prefix: /v1/crash}}
backend: echo
auth: crash-auth
---
kind: Route
name: dry
gateway: public
match: {{prefix: /v1/dry}}
backend: echo
auth: dry-auth
---
kind: AuthPolicy
name: orders-auth
identity:
  - api_key: {{header: x-api-key}}
  - jwt:
      issuer: {ISSUER}
      audiences: [orders]
      jwks: keys/jwks.json
      claims_to_headers: {{sub: x-user-id}}
rules:
  - deny: {{paths: ["/v1/orders/admin"]}}
  - allow: {{roles: [admin]}}
  - allow: {{methods: [GET], scopes: [orders:read]}}
  - allow: {{when: 'request.method == "GET" && identity.plan == "gold"'}}
---
kind: AuthPolicy
name: team-auth
identity:
  - custom: {{plugin: "waypost_test_plugins:team_token_async"}}
---
kind: AuthPolicy
name: crash-auth
identity:
  - custom: {{plugin: "waypost_test_plugins:crash"}}
---
kind: AuthPolicy
name: dry-auth
mode: dry_run
identity:
  - api_key: {{}}
rules:
  - allow: {{roles: [nobody]}}
"""


def write_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1, and client certificates: `billing` (DNS SAN
    billing) and `stranger` (URI SAN spiffe://test/stranger). Returns the PEM paths by name."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key_pem(key: rsa.RSAPrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("waypost test CA"))
        .issuer_name(name("waypost test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": directory / "ca.pem"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(label: str, cn: str, san: list[x509.GeneralName] | None) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        paths[label] = directory / f"{label}.pem"
        paths[f"{label}-key"] = directory / f"{label}-key.pem"
        paths[label].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        paths[f"{label}-key"].write_bytes(key_pem(key))

    issue("server", "127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    issue("billing", "billing", [x509.DNSName("billing")])
    issue("stranger", "stranger", [x509.UniformResourceIdentifier("spiffe://test/stranger")])
    return paths
