"""Policy fields of the gateway features (issue 6): what is valid, and the file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from waypost.policies import PolicyError, load_policies
from waypost.xds.compiler import compile_policy

BASE = """\
kind: Gateway
name: public
port: 8080
---
kind: Service
name: orders
endpoints: ["10.0.0.5:9001"]
---
"""


def problems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> list[str]:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "p.yaml").write_text(BASE + text)
    try:
        load_policies("policies")
    except PolicyError as exc:
        return [str(d) for d in exc.diagnostics]
    return []


def route(more: str) -> str:
    return f"kind: Route\nname: r\ngateway: public\nmatch: {{prefix: /x}}\nbackend: orders\n{more}"


@pytest.mark.parametrize(
    ("more", "expected"),
    [
        (
            "mirror: {service: ghost}\n",
            "policies/p.yaml:14: Route r: mirror.service 'ghost' is not a Service",
        ),
        ('deny: [{paths: ["/(?=x)"]}]\n', "policies/p.yaml:14: Route r: deny[0].paths[0]: lookahead"),
        ("deny: [{}]\n", "policies/p.yaml:14: Route r: deny[0]: a deny rule needs paths, headers or both"),
        (
            "fault_injection: {}\n",
            "policies/p.yaml:14: Route r: fault_injection: fault needs delay, abort or both",
        ),
        (
            "fault_injection: {abort: {status: 503, percent: 101}}\n",
            "policies/p.yaml:14: Route r: fault_injection.abort.percent",
        ),
        ("compression: gzip\n", "policies/p.yaml:14: Route r: compression"),
    ],
)
def test_route_feature_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, more: str, expected: str
) -> None:
    found = problems(tmp_path, monkeypatch, route(more))
    assert any(line.startswith(expected) for line in found), found


def test_service_tls_needs_cert_and_key_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "policies" / "certs").mkdir(parents=True)
    (tmp_path / "policies" / "certs" / "ca.pem").write_text("x")
    found = problems(
        tmp_path,
        monkeypatch,
        'kind: Service\nname: pay\nendpoints: ["10.0.0.9:443"]\ntls: {ca: certs/ca.pem, cert: certs/c.pem}\n',
    )
    assert any("cert and key go together" in line for line in found), found
    found = problems(
        tmp_path,
        monkeypatch,
        'kind: Service\nname: pay\nendpoints: ["10.0.0.9:443"]\ntls: {ca: certs/nope.pem}\n',
    )
    assert any(line.startswith("policies/p.yaml:12: Service pay: tls.ca") for line in found), found


def test_gateway_feature_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = BASE.replace(
        "port: 8080\n",
        "port: 8080\nlimits: {methods: [BREW], max_request_headers_kb: 0}\n"
        'deny: [{headers: {user-agent: "\\\\1"}}]\ntracing: {collector: nowhere}\n',
    )
    monkeypatch.chdir(tmp_path)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(text)
    with pytest.raises(PolicyError) as exc:
        load_policies("policies")
    found = "\n".join(str(d) for d in exc.value.diagnostics)
    for fragment in ("limits.methods[0]", "limits.max_request_headers_kb", "tracing.collector"):
        assert fragment in found, found


def test_examples_stay_valid_and_mirror_cluster_is_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert problems(tmp_path, monkeypatch, route("")) == []
    text = 'kind: Service\nname: shadow\nendpoints: ["10.0.0.7:9001"]\n---\n' + route(
        "mirror: {service: shadow, percent: 5}\n"
    )
    assert problems(tmp_path, monkeypatch, text) == []
    compiled = compile_policy(load_policies("policies"))
    assert compiled.gateways["public"].clusters == {"orders", "shadow"}


def test_grpc_json_descriptor_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from support.greeter_proto import descriptor_set

    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "api.pb").write_bytes(descriptor_set())
    (tmp_path / "policies" / "junk.pb").write_bytes(b"\xff\xff not a descriptor")
    ok = route("grpc_json: {descriptor: api.pb, services: [helloworld.Greeter]}\n")
    assert problems(tmp_path, monkeypatch, ok) == []
    missing = route("grpc_json: {descriptor: api.pb, services: [helloworld.Greeter, shop.Cart]}\n")
    assert problems(tmp_path, monkeypatch, missing) == [
        "policies/p.yaml:14: Route r: grpc_json.services: shop.Cart not in 'api.pb'"
    ]
    junk = route("grpc_json: {descriptor: junk.pb, services: [helloworld.Greeter]}\n")
    found = problems(tmp_path, monkeypatch, junk)
    assert len(found) == 1 and "'junk.pb' is not a protobuf descriptor set" in found[0], found
