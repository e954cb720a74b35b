"""The ext_authz decision core without Envoy: identity sources, rules, plugins, load-time checks,
the gRPC encoding, and what the compiler emits for AuthPolicies."""

from __future__ import annotations

import asyncio
import inspect
import sys
import textwrap
from pathlib import Path

import jwt
import pytest
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.service.auth.v3 import external_auth_pb2

from authz_support import KEYS, PLUGIN_DIR, Signer, consumers_yaml, policy_yaml
from waypost.cli import main as cli_main
from waypost.filters.authz.core import AuthRequest, AuthzCore, Decision, hash_api_key, normalize_path
from waypost.filters.authz.grpc_service import AuthzGrpcService, encode_decision
from waypost.filters.authz.http_service import _Cache, encode_http
from waypost.h2grpc import GrpcError, Status
from waypost.policies.diagnostics import PolicyError
from waypost.policies.loader import load_policies
from waypost.policies.model import PolicySet
from waypost.xds.cache import SnapshotCache
from waypost.xds.compiler import compile_policy


@pytest.fixture(autouse=True)
def plugins_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))


def load(tmp_path: Path, text: str, *, signer: Signer | None = None) -> PolicySet:
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / "jwks.json").write_text((signer or Signer.new()).jwks())
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(text).lstrip())
    return load_policies(tmp_path)


def decide(core: AuthzCore, route: str, path: str = "/x", method: str = "GET", **kwargs: object) -> Decision:
    headers = kwargs.pop("headers", {})
    result = core.decide(
        AuthRequest(route=route, policies=(), method=method, path=path, headers=headers, **kwargs)  # type: ignore[arg-type]
    )
    return asyncio.run(result) if inspect.isawaitable(result) else result  # type: ignore[arg-type, return-value]


MTLS = """
kind: Gateway
name: gw
port: 8443
---
kind: Service
name: s
endpoints: ["127.0.0.1:9"]
---
kind: Route
name: r
gateway: gw
match: {prefix: /}
backend: s
auth: certs
---
kind: Route
name: slow
gateway: gw
match: {prefix: /slow}
backend: s
auth: slow
---
kind: AuthPolicy
name: certs
identity: [{mtls: {}}]
rules:
  - allow: {roles: [ops]}
  - allow: {when: 'identity.labels.tenant == "acme" && request.path.startsWith("/acme/")'}
---
kind: AuthPolicy
name: slow
identity: [{custom: {plugin: "waypost_test_plugins:slow", timeout: 100ms}}]
---
kind: Consumer
name: billing
roles: [ops]
---
kind: Consumer
name: acme
labels: {tenant: acme}
"""


def test_mtls_identity_consumers_cel_and_plugin_timeout(tmp_path: Path) -> None:
    core = AuthzCore()
    core.apply(load(tmp_path, MTLS))
    assert decide(core, "r").status == 401  # no client certificate
    billing = decide(core, "r", principal="billing")
    assert billing.allowed and dict(billing.headers)["x-waypost-consumer"] == "billing"
    # A certificate without SANs is reported by subject; its CN names the Consumer.
    assert decide(core, "r", path="/acme/1", principal="CN=acme,O=Acme Inc").allowed
    assert decide(core, "r", path="/other", principal="CN=acme,O=Acme Inc").status == 403
    assert decide(core, "r", principal="spiffe://elsewhere/x").status == 403
    slow = decide(core, "slow", headers={})
    assert (slow.status, slow.reason) == (500, "auth plugin timed out")


def test_decisions_without_envoy(tmp_path: Path) -> None:
    signer = Signer.new()
    core = AuthzCore()
    core.apply(load(tmp_path, policy_yaml(8080, "127.0.0.1:9") + "---\n" + consumers_yaml(), signer=signer))
    acme = decide(core, "orders", headers={"x-api-key": KEYS["acme"]})
    assert acme.allowed and (acme.consumer, acme.plan) == ("acme", "gold")
    assert decide(core, "orders", "/v1/orders/admin", headers={"x-api-key": KEYS["acme"]}).status == 403
    # Normalization is the second line of defence behind Envoy's.
    assert (
        decide(
            core, "orders", "/v1/orders/%2e%2e/orders/admin?x=1", headers={"x-api-key": KEYS["acme"]}
        ).status
        == 403
    )
    # Not a Bearer token: not a credential of the jwt kind at all.
    basic = decide(core, "orders", headers={"authorization": "Basic Zm9vOmJhcg=="})
    assert (basic.status, basic.reason) == (401, "missing credentials")
    for attack, token in signer.attacks().items():
        decision = decide(core, "orders", method="DELETE", headers={"authorization": f"Bearer {token}"})
        assert decision.status == 401, attack
    assert decide(core, "no-such-route").status == 403
    sync_team = decide(core, "team", headers={"x-team-token": "let-me-in"})
    assert sync_team.allowed and ("x-waypost-team", "a") in sync_team.headers


@pytest.mark.parametrize(
    ("raw", "normalized"),
    [
        ("/a/b?q=1", "/a/b"),
        ("//a//b", "/a/b"),
        ("/a/./b/../c", "/a/c"),
        ("/a/%2e%2e/b", "/b"),
        ("/a/b/", "/a/b/"),
        ("/", "/"),
    ],
)
def test_normalize_path(raw: str, normalized: str) -> None:
    assert normalize_path(raw) == normalized


def test_grpc_encoding_carries_metadata_contract() -> None:
    allow = external_auth_pb2.CheckResponse.FromString(
        encode_decision(
            Decision(
                status=200,
                reason="allowed",
                consumer="acme",
                plan="gold",
                headers=(("x-waypost-consumer", "acme"),),
            )
        )
    )
    assert allow.status.code == 0
    assert dict(allow.dynamic_metadata) == {"consumer": "acme", "plan": "gold"}
    assert [(h.header.key, h.header.value) for h in allow.ok_response.headers] == [
        ("x-waypost-consumer", "acme")
    ]
    denied = external_auth_pb2.CheckResponse.FromString(
        encode_decision(
            Decision(status=401, reason="r", headers=(("www-authenticate", "Bearer"),), body=b"{}")
        )
    )
    assert denied.status.code == 16 and denied.denied_response.status.code == 401
    assert denied.denied_response.body == "{}"


def test_grpc_answer_with_quota_headers_equals_one_encoded_message() -> None:
    """The reused bytes of an allow plus the per-header suffixes parse as the whole answer."""
    service = AuthzGrpcService(AuthzCore())
    base = Decision(
        status=200, reason="allowed", consumer="acme", plan="gold", headers=(("x-waypost-consumer", "acme"),)
    )
    for remaining in ("9", "8", "9"):
        counted = Decision(
            status=200,
            reason="allowed",
            consumer="acme",
            plan="gold",
            headers=base.headers,
            client_headers=(
                ("ratelimit-limit", "10"),
                ("ratelimit-remaining", remaining),
                ("ratelimit-reset", "1"),
            ),
        )
        assert external_auth_pb2.CheckResponse.FromString(
            service.encode(counted)
        ) == external_auth_pb2.CheckResponse.FromString(encode_decision(counted))
    assert service.encode(base) == encode_decision(base)


@pytest.mark.parametrize("head", [False, True])
def test_http_answer_with_quota_headers_has_every_header_once(head: bool) -> None:
    cache = _Cache()
    for remaining in ("9", "8"):
        counted = Decision(
            status=200,
            reason="allowed",
            consumer="acme",
            headers=(("x-waypost-consumer", "acme"),),
            client_headers=(("ratelimit-limit", "10"), ("ratelimit-remaining", remaining)),
        )
        answer = cache.get(counted, head=head)
        assert answer.endswith(b"\r\n\r\n")
        lines = answer[:-4].decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 200 OK"
        assert sorted(lines[1:]) == sorted(encode_http(counted).decode()[:-4].split("\r\n")[1:])
        assert f"ratelimit-remaining: {remaining}" in lines


async def test_grpc_service_rejects_garbage_without_crashing() -> None:
    service = AuthzGrpcService(AuthzCore())
    with pytest.raises(GrpcError, match="malformed") as caught:
        service.check(b"\xff\xff\xff")
    assert caught.value.status == Status.INVALID_ARGUMENT
    # No policy loaded yet: a clean 503 answer, not an exception.
    encoded = service.check(b"")
    assert isinstance(encoded, bytes)
    answer = external_auth_pb2.CheckResponse.FromString(encoded)
    assert answer.denied_response.status.code == 503


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("allow: {when: 'request.method =='}", "invalid CEL expression"),
        ("allow: {when: 'reqest.method == \"GET\"'}", "unknown variable(s) reqest"),
    ],
)
def test_bad_cel_is_a_load_error_with_file_and_line(tmp_path: Path, rule: str, message: str) -> None:
    text = MTLS.replace("  - allow: {roles: [ops]}", f"  - {rule}")
    with pytest.raises(PolicyError) as caught:
        load(tmp_path, text)
    (diagnostic,) = caught.value.diagnostics
    assert str(diagnostic).startswith(f"{tmp_path}/policy.yaml:27: AuthPolicy certs: rules[0].allow.when: ")
    assert message in str(diagnostic)


@pytest.mark.parametrize("plugin", ["nocolon", "a..b:f", "mod:", ":f", "mod.:f", "1mod:f"])
def test_malformed_plugin_strings_are_rejected(tmp_path: Path, plugin: str) -> None:
    with pytest.raises(PolicyError, match="plugin"):
        load(tmp_path, MTLS.replace("waypost_test_plugins:slow", plugin))


def test_compiler_wires_ext_authz_on_every_gateway_configured_per_route(tmp_path: Path) -> None:
    internal = (
        "---\nkind: Gateway\nname: internal\nport: 9090\n---\n"
        "kind: Route\nname: internal\ngateway: internal\nmatch: {prefix: /}\nbackend: echo\n"
    )
    text = policy_yaml(8080, "127.0.0.1:9", failure_mode="open") + "---\n" + consumers_yaml() + internal
    policy = load(tmp_path, text)
    compiled = compile_policy(policy)
    SnapshotCache().prepare(compiled)  # the decision clusters travel with the snapshot: consistent

    def filters(gateway: str) -> dict[str, object]:
        hcm = hcm_pb2.HttpConnectionManager()
        compiled.gateways[gateway].listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
        return {f.name: f.typed_config for f in hcm.http_filters}

    # The same auth filters everywhere (issue 12): a gateway without auth has them too, switched off.
    assert "envoy.filters.http.ext_authz" in filters("internal")
    public = filters("public")
    assert next(iter(public)) == "waypost.identity_headers"
    config = ext_authz_pb2.ExtAuthz()
    public["envoy.filters.http.ext_authz"].Unpack(config)  # type: ignore[attr-defined]
    assert config.failure_mode_allow and config.grpc_service.envoy_grpc.cluster_name == "waypost_authz"
    per_route = {}
    for gateway in ("public", "internal"):
        for vhost in compiled.gateways[gateway].route_config.virtual_hosts:
            for route in vhost.routes:
                settings = ext_authz_pb2.ExtAuthzPerRoute()
                route.typed_per_filter_config["envoy.filters.http.ext_authz"].Unpack(settings)
                per_route[route.name] = settings
    assert per_route["public"].disabled and per_route["internal"].disabled
    assert dict(per_route["orders"].check_settings.context_extensions) == {
        "route": "orders",
        "policies": "orders-auth",
    }
    assert per_route["orders"].check_settings.grpc_service.timeout.ToMilliseconds() >= 500

    # No auth change alters a listener: only the route table (which old connections see at once).
    (tmp_path / "again").mkdir()
    opened = load(tmp_path / "again", text.replace("auth: orders-auth\n", "", 1))
    assert opened.routes["orders"].auth_policies == ()
    for gateway in ("public", "internal"):
        before = compiled.gateways[gateway].listener.SerializeToString(deterministic=True)
        after = compile_policy(opened).gateways[gateway].listener.SerializeToString(deterministic=True)
        assert before == after, gateway


def test_keys_new_prints_key_once_and_the_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keys", "new", "acme"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[1].strip()
    assert len(key) > 40 and out[-1].strip() == f'- "{hash_api_key(key)}"'
    assert cli_main(["keys", "new", "acme"]) == 0
    assert capsys.readouterr().out.splitlines()[1].strip() != key


def test_plugin_dir_is_importable() -> None:
    assert str(PLUGIN_DIR) in sys.path


def test_jwks_pins_algorithms_to_key_types() -> None:
    import json

    from cryptography.hazmat.primitives.asymmetric import ec

    from waypost.filters.authz.jwks import RemoteKeySet, parse_jwks

    rsa_jwk = json.loads(Signer.new().jwks())["keys"][0]
    ec_public = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_public))
    ec_jwk["kid"] = "ec"
    oct_jwk = {"kty": "oct", "k": "c2VjcmV0", "kid": "hs"}
    any_rsa = {**rsa_jwk, "kid": "any-rsa", "alg": None}
    keys = parse_jwks(json.dumps({"keys": [rsa_jwk, any_rsa, ec_jwk, oct_jwk]}))
    assert keys.find("k1").algorithms == {"RS256"}  # the JWK names its alg
    assert "PS256" in keys.find("any-rsa").algorithms and "HS256" not in keys.find("any-rsa").algorithms
    assert keys.find("ec").algorithms == {"ES256"}
    assert keys.find("hs") is None  # symmetric keys are never loaded
    assert keys.find(None) is None  # no kid and several keys: ambiguous, refused
    with pytest.raises(ValueError):
        parse_jwks("[]")
    remote = RemoteKeySet("http://plain.invalid/jwks.json")  # not https: never fetched, never ready
    assert not remote.ready and remote.find("k1") is None
