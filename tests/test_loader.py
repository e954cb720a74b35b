"""The policy loader: files -> documents, each kind of bad input -> exact ``path:line: ...`` lines."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from waypost.policies import Diagnostic, PolicyError, PolicySet, load_policies
from waypost.policies.model import KINDS, SourceRef
from waypost.policies.types import PrivateBytes

# Every kind the model knows, in its order: tests stay right as kinds are added.
KNOWN_KINDS = ", ".join(KINDS)

SPEC_EXAMPLES = Path(__file__).parent / "spec_examples"
CERTS = SPEC_EXAMPLES / "certs"

# Valid documents every case can refer to, so a case shows only the error it is about.
BASE = """\
kind: Gateway
name: public
port: 8080
---
kind: Service
name: orders
endpoints: ["10.0.0.5:9001"]
"""

Files = dict[str, str | bytes]


def write(root: Path, files: Files) -> None:
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content)
        else:
            target.write_text(content)


@pytest.fixture
def policies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty `policies/` directory, loaded by its relative name as a user would type it."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "policies"
    root.mkdir()
    return root


def problems(root: Path, files: Files) -> list[str]:
    write(root, files)
    with pytest.raises(PolicyError) as info:
        load_policies(root.name)
    return [str(diagnostic) for diagnostic in info.value.diagnostics]


def case(doc: str | bytes, *expected: str, id: str, extra: Files | None = None) -> object:
    """One bad document in policies/t.yaml (next to BASE), and the exact problems it causes."""
    return pytest.param({"base.yaml": BASE, "t.yaml": doc, **(extra or {})}, list(expected), id=id)


ROUTE = "kind: Route\nname: r\ngateway: public\nmatch: {prefix: /}\nbackend: orders\n"

CASES = [
    # --- unknown fields ---------------------------------------------------------------------------
    case(
        "kind: Route\nname: r\ngateway: public\nmatch: {prefix: /}\nbakend: orders\n",
        "policies/t.yaml:5: Route r: unknown field 'bakend' (did you mean 'backend'?)",
        id="unknown-field",
    ),
    case(
        ROUTE + "retries:\n  attempts: 2\n  attemps: 3\n",
        "policies/t.yaml:8: Route r: unknown field 'retries.attemps' (did you mean 'attempts'?)",
        id="unknown-nested-field",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9000\ncolour: blue\n",
        "policies/t.yaml:4: Gateway g: unknown field 'colour'",
        id="unknown-field-no-guess",
    ),
    # --- wrong types ------------------------------------------------------------------------------
    case(
        'kind: Gateway\nname: g\nport: "9000"\n',
        "policies/t.yaml:3: Gateway g: port: expected an integer, got '9000'",
        id="wrong-type-int",
    ),
    case(
        ROUTE.replace("match: {prefix: /}", "hosts: api.example.com\nmatch: {prefix: /}"),
        "policies/t.yaml:4: Route r: hosts: expected a list, got 'api.example.com'",
        id="wrong-type-list",
    ),
    case(
        "kind: RateLimitPolicy\nname: rl\nshadow: yes\n",
        "policies/t.yaml:3: RateLimitPolicy rl: shadow: expected true or false, got 'yes'",
        id="wrong-type-bool-yaml11-word",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9000\nnodes:\n  labels: {zone: 1}\n",
        "policies/t.yaml:5: Gateway g: nodes.labels.zone: expected a string, got 1",
        id="wrong-type-map-value",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9000\ntls: certs/api.pem\n",
        "policies/t.yaml:4: Gateway g: tls: expected a mapping, got 'certs/api.pem'",
        id="wrong-type-mapping",
    ),
    case(
        ROUTE + "auth: 5\n",
        "policies/t.yaml:6: Route r: auth: expected a string or a list, got 5",
        id="wrong-type-union",
    ),
    case(
        ROUTE + "rate_limit: [ok, 'bad name']\n",
        "policies/t.yaml:6: Route r: rate_limit[1]: 'bad name' is not a valid name: use letters, digits,"
        " '-', '_' and '.', at most 63 characters, starting and ending with a letter or digit",
        id="union-list-member",
    ),
    case(
        "kind: Service\nname: s\nendpoints: ['10.0.0.1:80']\nprotocol: http3\n",
        "policies/t.yaml:4: Service s: protocol: must be one of 'http1', 'http2' or 'grpc', got 'http3'",
        id="literal",
    ),
    case(
        ROUTE + "retries: {on: [5xx, sometimes]}\n",
        "policies/t.yaml:6: Route r: retries.on[1]: must be one of '5xx', 'gateway-error', 'reset',"
        " 'reset-before-request', 'connect-failure', 'retriable-4xx', 'refused-stream',"
        " 'retriable-status-codes', 'envoy-ratelimited', 'cancelled', 'deadline-exceeded', 'internal',"
        " 'resource-exhausted' or 'unavailable', got 'sometimes'",
        id="literal-in-list",
    ),
    case(
        ROUTE + "request_headers: {add: {'bad header': x}}\n",
        "policies/t.yaml:6: Route r: request_headers.add: 'bad header' is not a valid header name",
        id="bad-mapping-key",
    ),
    case(
        "kind: Route\nname: 'no spaces'\ngateway: public\nmatch: {prefix: /}\nbackend: orders\n",
        "policies/t.yaml:2: Route no spaces: name: 'no spaces' is not a valid name: use letters,"
        " digits, '-', '_' and '.', at most 63 characters, starting and ending with a letter or digit",
        id="bad-name",
    ),
    case(
        ROUTE.replace("{prefix: /}", "{prefix: v1}"),
        "policies/t.yaml:4: Route r: match.prefix: 'v1' must start with '/'",
        id="prefix-without-slash",
    ),
    case(
        "kind: Consumer\nname: c\napi_keys: [my-secret-key]\n",
        # The value is not echoed: it may be a plaintext key.
        "policies/t.yaml:3: Consumer c: api_keys[0]: expected 'sha256:' and 64 lowercase hex digits:"
        " commit key hashes, never keys",
        id="plaintext-api-key",
    ),
    case(
        "kind: RateLimitPolicy\nname: rl\nlimits:\n  - {by: user, requests: 1, per: second}\n",
        "policies/t.yaml:4: RateLimitPolicy rl: limits[0].by: 'user' must be consumer, client_ip, route"
        " or header:<name>",
        id="bad-limit-by",
    ),
    case(
        "kind: Service\nname: s\nendpoints: []\n",
        "policies/t.yaml:3: Service s: endpoints: must not be empty (unless registration is set)",
        id="empty-list",
    ),
    # --- missing fields ---------------------------------------------------------------------------
    case(
        "kind: Gateway\nname: g\n",
        "policies/t.yaml:1: Gateway g: field 'port' is required",
        id="missing-field",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9000\ntls:\n  cert: certs/api.pem\n",
        "policies/t.yaml:4: Gateway g: field 'tls.key' is required",
        id="missing-nested-field",
    ),
    case(
        "kind: Consumer\nname: c\nsubscriptions:\n  - {route: r, status: approved}\n  - {route: r2}\n",
        "policies/t.yaml:5: Consumer c: field 'subscriptions[1].status' is required",
        id="missing-field-in-list-item",
    ),
    case(
        "kind: Gateway\nport: 9000\n",
        "policies/t.yaml:1: Gateway: field 'name' is required",
        id="missing-name",
    ),
    # --- durations, ports, endpoints --------------------------------------------------------------
    case(
        ROUTE + "timeout: 5 seconds\n",
        "policies/t.yaml:6: Route r: timeout: '5 seconds' is not a duration such as 250ms, 1s, 5m or 1h",
        id="bad-duration",
    ),
    case(
        "kind: Service\nname: s\nendpoints: ['10.0.0.1:80']\nconnect_timeout: 5\n",
        "policies/t.yaml:4: Service s: connect_timeout: expected a duration such as 250ms, 1s, 5m or 1h",
        id="duration-as-number",
    ),
    case(
        ROUTE + "timeout: 1.5ms\n",
        "policies/t.yaml:6: Route r: timeout: '1.5ms' is finer than a millisecond",
        id="duration-too-fine",
    ),
    case(
        ROUTE + f"timeout: {'9' * 400}s\n",
        f"policies/t.yaml:6: Route r: timeout: '{'9' * 400}s' is longer than 10,000 years",
        id="duration-overflow",
    ),
    case(
        "kind: Gateway\nname: g\nport: 70000\n",
        "policies/t.yaml:3: Gateway g: port: must be between 1 and 65535, got 70000",
        id="port-too-high",
    ),
    case(
        "kind: Gateway\nname: g\nport: 0\n",
        "policies/t.yaml:3: Gateway g: port: must be between 1 and 65535, got 0",
        id="port-zero",
    ),
    case(
        "kind: Service\nname: s\nendpoints: ['10.0.0.1:80', 'backend', '10.0.0.2:99999', 'bad_host:80']\n",
        "policies/t.yaml:3: Service s: endpoints[1]: 'backend' is not 'host:port'",
        "policies/t.yaml:3: Service s: endpoints[2]: '10.0.0.2:99999': port must be between 1 and 65535",
        "policies/t.yaml:3: Service s: endpoints[3]: 'bad_host:80': 'bad_host' is neither an IP address"
        " nor a host name",
        id="bad-endpoints",
    ),
    case(
        "kind: Service\nname: s\nendpoints:\n  - 10.0.0.1:80\n  - nowhere\n",
        "policies/t.yaml:5: Service s: endpoints[1]: 'nowhere' is not 'host:port'",
        id="bad-endpoint-line",
    ),
    case(
        "kind: Service\nname: s\nendpoints: ['10.0.0.1:80']\n"
        "outlier_detection: {max_ejection_percent: 101}\n",
        "policies/t.yaml:4: Service s: outlier_detection.max_ejection_percent: must be between 0 and 100,"
        " got 101",
        id="percent-out-of-range",
    ),
    case(
        "kind: Service\nname: s\nendpoints: ['10.0.0.1:80']\nhealth_check: {path: /h, healthy: 0}\n",
        "policies/t.yaml:4: Service s: health_check.healthy: must be at least 1, got 0",
        id="lower-bound-only",
    ),
    # --- exclusive fields -------------------------------------------------------------------------
    case(
        ROUTE.replace("{prefix: /}", "\n  prefix: /a\n  path: /b"),
        "policies/t.yaml:4: Route r: match: prefix and path are exclusive: give exactly one of prefix,"
        " path, regex",
        id="exclusive-match",
    ),
    case(
        ROUTE.replace("{prefix: /}", "{methods: [GET]}"),
        "policies/t.yaml:4: Route r: match: exactly one of prefix, path, regex is required",
        id="no-path-match",
    ),
    case(
        ROUTE + "backends: [{service: orders}]\n",
        "policies/t.yaml:1: Route r: exactly one of backend, backends is required",
        id="backend-and-backends",
    ),
    case(
        "kind: AuthPolicy\nname: a\nidentity:\n  - {api_key: {}, mtls: {}}\n",
        "policies/t.yaml:4: AuthPolicy a: identity[0]: each identity entry has exactly one of api_key,"
        " jwt, mtls, custom",
        id="exclusive-identity",
    ),
    # --- document structure -----------------------------------------------------------------------
    case(
        "kind: Servce\nname: s\n",
        f"policies/t.yaml:1: unknown kind 'Servce' (did you mean 'Service'?); known kinds: {KNOWN_KINDS}",
        id="unknown-kind",
    ),
    case(
        "name: s\nport: 80\n",
        f"policies/t.yaml:1: field 'kind' is required; known kinds: {KNOWN_KINDS}",
        id="missing-kind",
    ),
    case(
        "name: s\nkind: [Gateway]\n",
        f"policies/t.yaml:2: kind: expected a string, got a list; known kinds: {KNOWN_KINDS}",
        id="kind-not-a-string",
    ),
    case(
        "- kind: Gateway\n  name: g\n",
        "policies/t.yaml:1: a policy document is a mapping with kind and name, got a list",
        id="document-not-a-mapping",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9000\naddress: 0.0.0.0\nport: 9001\n",
        "policies/t.yaml:5: Gateway g: duplicate key 'port' (first at line 3)",
        id="duplicate-key",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9000\nnodes:\n  labels:\n    zone: a\n    zone: b\n",
        "policies/t.yaml:7: Gateway g: nodes.labels: duplicate key 'zone' (first at line 6)",
        id="duplicate-nested-key",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9000\nnodes: {labels: {1: a}}\n",
        "policies/t.yaml:4: Gateway g: nodes.labels: key 1 is not a string",
        id="non-string-key",
    ),
    case(
        "kind: Gateway\nname: g\n? [a, b]\n: c\nport: 9000\n",
        "policies/t.yaml:3: Gateway g: key a list is not a string",
        id="complex-key",
    ),
    case(
        "kind: Gateway\nname: g\nport: !!binary aGk=\n",
        "policies/t.yaml:3: Gateway g: port: unsupported tag 'tag:yaml.org,2002:binary'",
        "policies/t.yaml:3: Gateway g: port: expected an integer, got 'aGk='",
        id="unsupported-tag",
    ),
    case(
        "kind: Gateway\nname: g\nport: *nowhere\n",
        "policies/t.yaml:3: Gateway g: port: alias '*nowhere' is not defined",
        id="undefined-alias",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9000\nnodes: &n {labels: *n}\n",
        "policies/t.yaml:4: Gateway g: nodes.labels: alias '*n' refers to the node that contains it",
        id="recursive-alias",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9000\nnodes: " + "[" * 70 + "]" * 70 + "\n",
        "policies/t.yaml:4: Gateway g: nodes: nested more than 64 levels deep",
        id="too-deep",
    ),
    # --- YAML syntax ------------------------------------------------------------------------------
    case(
        "kind: Gateway\nname: g\nport: [9000\n",
        "policies/t.yaml:4: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence"
        " at line 3)",
        id="yaml-unclosed-flow",
    ),
    case(
        "kind: Gateway\nname: g\n  port: 9000\n",
        "policies/t.yaml:3: invalid YAML: mapping values are not allowed in this context",
        id="yaml-bad-indentation",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9000\n\tnodes: {}\n",
        "policies/t.yaml:4: invalid YAML: found a tab character that violates indentation (while"
        " scanning a plain scalar at line 3)",
        id="yaml-tab",
    ),
    case(
        b"kind: Gateway\nname: g\nport: 9000\naddress: \xff\n",
        "policies/t.yaml:4: not valid UTF-8 or UTF-16 text: invalid leading UTF-8 octet",
        id="not-utf8",
    ),
    # --- referenced files -------------------------------------------------------------------------
    case(
        "kind: Gateway\nname: g\nport: 9443\ntls: {cert: certs/api.pem, key: certs/nope.pem}\n",
        "policies/t.yaml:4: Gateway g: tls.key: file 'certs/nope.pem' not found",
        id="missing-file",
        extra={"certs/api.pem": (CERTS / "api.pem").read_bytes()},
    ),
    case(
        "kind: Gateway\nname: g\nport: 9443\ntls:\n  cert: ../api.pem\n  key: /etc/ssl/key.pem\n",
        "policies/t.yaml:5: Gateway g: tls.cert: '../api.pem' is outside the policy directory",
        "policies/t.yaml:6: Gateway g: tls.key: '/etc/ssl/key.pem' must be a path relative to the policy"
        " directory",
        id="escaping-and-absolute-files",
    ),
    case(
        "kind: Gateway\nname: g\nport: 9443\ntls:\n  cert: certs/a/../../../x.pem\n  key: certs\n",
        "policies/t.yaml:5: Gateway g: tls.cert: 'certs/a/../../../x.pem' is outside the policy directory",
        "policies/t.yaml:6: Gateway g: tls.key: 'certs' is a directory, not a file",
        id="escaping-after-normalizing",
        extra={"certs/api.pem": (CERTS / "api.pem").read_bytes()},
    ),
    case(
        "kind: Gateway\nname: g\nport: 9443\ntls:\n  cert: certs/api.pem\n  key: certs/api.pem\n"
        "  client_ca: certs/ca.txt\n",
        "policies/t.yaml:6: Gateway g: tls.key: 'certs/api.pem' holds no PEM private key ('-----BEGIN"
        " ... PRIVATE KEY-----')",
        "policies/t.yaml:7: Gateway g: tls.client_ca: 'certs/ca.txt' is not a PEM file (no '-----BEGIN'"
        " line)",
        id="not-pem",
        extra={"certs/api.pem": (CERTS / "api.pem").read_bytes(), "certs/ca.txt": "my CA"},
    ),
    case(
        "kind: AuthPolicy\nname: a\nidentity:\n  - jwt: {issuer: i, jwks: keys/jwks.json}\n"
        "  - jwt: {issuer: i, jwks: keys/keys.json}\n  - jwt: {issuer: i, jwks: 'http://idp/jwks'}\n",
        "policies/t.yaml:4: AuthPolicy a: identity[0].jwt.jwks: 'keys/jwks.json' is not a JWKS file:"
        " expected a JSON object with a 'keys' list",
        "policies/t.yaml:5: AuthPolicy a: identity[1].jwt.jwks: 'keys/keys.json' is not a JWKS file:"
        " expected a JSON object with a 'keys' list",
        "policies/t.yaml:6: AuthPolicy a: identity[2].jwt.jwks: 'http://idp/jwks' must be an https:// URL"
        " or a file in the policy directory",
        id="bad-jwks",
        extra={"keys/jwks.json": "{not json", "keys/keys.json": '{"keys": {}}'},
    ),
]


@pytest.mark.parametrize(("files", "expected"), CASES)
def test_bad_input_is_reported_at_its_line(policies: Path, files: Files, expected: list[str]) -> None:
    assert problems(policies, files) == expected


def test_every_problem_is_reported_at_once(policies: Path) -> None:
    found = problems(
        policies,
        {
            "a.yaml": "kind: Gateway\nname: g\nport: 0\n---\nkind: Gateway\nname: h\n",
            "sub/b.yml": "kind: Route\nname: r\ngateway: g\nmatch: {prefix: /}\nbackend: ordrs\n",
            "sub/c.yaml": "kind: Service\nname: s\nendpoints: [x]\n---\nkind: Consumer\nname: c\nplan: 1\n",
        },
    )
    assert found == [
        "policies/a.yaml:3: Gateway g: port: must be between 1 and 65535, got 0",
        "policies/a.yaml:5: Gateway h: field 'port' is required",
        # References are checked across files, and to documents that have problems of their own.
        "policies/sub/b.yml:5: Route r: backend 'ordrs' is not a Service",
        "policies/sub/c.yaml:3: Service s: endpoints[0]: 'x' is not 'host:port'",
        "policies/sub/c.yaml:7: Consumer c: plan: expected a string, got 1",
    ]


def test_documents_before_a_syntax_error_are_still_checked(policies: Path) -> None:
    found = problems(
        policies,
        {"a.yaml": "kind: Gateway\nname: g\nport: 0\n---\nkind: Gateway\nname: [\n---\nkind: Gateway\n"},
    )
    assert found == [
        "policies/a.yaml:3: Gateway g: port: must be between 1 and 65535, got 0",
        "policies/a.yaml:7: invalid YAML: did not find expected node content (while parsing a flow node at"
        " line 7)",
    ]


def test_error_string_is_one_line_per_problem_sorted(policies: Path) -> None:
    write(policies, {"b.yaml": "kind: Gateway\nname: b\nport: 0\n", "a.yaml": "kind: Gateway\nname: a\n"})
    with pytest.raises(PolicyError) as info:
        load_policies("policies")
    assert str(info.value).splitlines() == [
        "policies/a.yaml:1: Gateway a: field 'port' is required",
        "policies/b.yaml:3: Gateway b: port: must be between 1 and 65535, got 0",
    ]
    assert all(isinstance(d, Diagnostic) for d in info.value.diagnostics)


def test_diagnostic_format() -> None:
    assert str(Diagnostic("p/r.yaml", 14, "Route", "orders", "backend 'ordrs' is not a Service")) == (
        "p/r.yaml:14: Route orders: backend 'ordrs' is not a Service"
    )
    assert str(Diagnostic("p/r.yaml", 3, "", "", "invalid YAML: oops")) == "p/r.yaml:3: invalid YAML: oops"
    assert str(Diagnostic("p", 0, "", "", "policy directory does not exist")) == (
        "p: policy directory does not exist"
    )


def test_missing_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PolicyError, match=r"^nowhere: policy directory does not exist$"):
        load_policies("nowhere")
    Path("file.yaml").write_text("kind: Gateway\n")
    with pytest.raises(PolicyError, match=r"^file.yaml: policy directory is not a directory$"):
        load_policies("file.yaml")


# --- valid input -----------------------------------------------------------------------------------


def test_spec_examples_load() -> None:
    loaded = load_policies(SPEC_EXAMPLES)
    assert set(loaded.gateways) == {"public", "internal"}
    assert set(loaded.services) == {"orders", "orders-v2", "payments"}
    assert set(loaded.routes) == {"orders-v1", "orders-v1-split", "payments"}
    assert set(loaded.auth_policies) == {"orders-auth"}
    assert set(loaded.consumers) == {"acme"}
    assert set(loaded.rate_limit_policies) == {"standard"}
    route = loaded.routes["orders-v1"]
    assert route.retries is not None and route.retries.on == ("5xx", "reset", "connect-failure")
    assert route.match.headers == {"x-canary": "true"}
    assert route.cors is not None and route.cors.max_age == 3_600_000
    assert loaded.consumers["acme"].api_keys == ("sha256:" + hashlib.sha256(b"test").hexdigest(),)
    assert sorted(loaded.files) == ["certs/api-key.pem", "certs/api.pem", "certs/ca.pem", "keys/jwks.json"]
    assert isinstance(loaded.files["certs/api-key.pem"], PrivateBytes)
    assert not isinstance(loaded.files["certs/api.pem"], PrivateBytes)
    assert "PRIVATE" not in repr(loaded.files)
    assert loaded.sources[("Route", "orders-v1")].path.endswith("spec_examples/routes.yaml")
    assert loaded.sources[("Route", "orders-v1")].line == 3


def test_valid_directory(policies: Path) -> None:
    write(
        policies,
        {
            "base.yaml": BASE,
            # Empty documents, comments, YAML 1.2 words and non-policy files are fine.
            "routes/r.yml": "---\n# nothing\n---\n" + ROUTE + "retries: {on: [reset]}\n---\n",
            "routes/notes.txt": "not yaml: [",
            "consumers.yaml": "kind: Consumer\nname: c\nlabels: {country: NO, active: on}\n",
            "empty.yaml": "",
            ".git/junk.yaml": "kind: [",  # hidden directories are not read
            ".hidden.yaml": "kind: [",
        },
    )
    loaded = load_policies("policies")
    assert isinstance(loaded, PolicySet)
    assert set(loaded.routes) == {"r"} and set(loaded.gateways) == {"public"}
    assert loaded.routes["r"].retries is not None and loaded.routes["r"].retries.on == ("reset",)
    assert loaded.consumers["c"].labels == {"country": "NO", "active": "on"}
    assert loaded.sources[("Route", "r")] == SourceRef("policies/routes/r.yml", 5)
    assert loaded.files == {}


def test_anchors_and_merge_keys(policies: Path) -> None:
    write(
        policies,
        {
            "base.yaml": BASE,
            "r.yaml": (
                "kind: Route\nname: a\ngateway: public\nmatch: {prefix: /a}\nbackend: orders\n"
                "retries: &retries {attempts: 2, on: [reset]}\n"
                "<<: {timeout: 3s, backend: ignored}\n"
                "---\n"
                "kind: Route\nname: b\ngateway: public\nmatch: {prefix: /b}\nbackend: orders\n"
                "defaults: &retries {attempts: 2, on: [reset]}\n"
                "retries: {<<: *retries, attempts: 5}\n"
            ),
        },
    )
    # `defaults` is not a field: anchors go on real fields, or in merged mappings.
    assert problems(policies, {}) == ["policies/r.yaml:14: Route b: unknown field 'defaults'"]
    write(
        policies,
        {
            "r.yaml": (
                "kind: Route\nname: a\ngateway: public\nmatch: {prefix: /a}\nbackend: orders\n"
                "retries: &retries {attempts: 2, on: [reset]}\n"
                "<<: {timeout: 3s, backend: ignored}\n"
                "---\n"
                "kind: Route\nname: b\ngateway: public\nmatch: {prefix: /b}\nbackend: orders\n"
                "<<: {retries: &retries {attempts: 2, on: [reset]}}\n"
                "retries: {<<: *retries, attempts: 5}\n"
            )
        },
    )
    loaded = load_policies("policies")
    assert loaded.routes["a"].timeout == 3000 and loaded.routes["a"].backend == "orders"
    retries = loaded.routes["b"].retries
    assert retries is not None and (retries.attempts, retries.on) == (5, ("reset",))


def test_anchors_do_not_cross_documents(policies: Path) -> None:
    found = problems(
        policies,
        {
            "base.yaml": BASE,
            "r.yaml": "kind: Gateway\nname: a\nport: &p 9000\n---\nkind: Gateway\nname: b\nport: *p\n",
        },
    )
    assert found == ["policies/r.yaml:7: Gateway b: port: alias '*p' is not defined"]


def test_merged_value_errors_point_at_their_definition(policies: Path) -> None:
    assert problems(
        policies,
        {
            "base.yaml": BASE,
            "r.yaml": "kind: Route\nname: a\ngateway: public\nbackend: orders\n"
            "match: {<<: &m {prefix: nope}}\n"
            "x: &bad\n  timeout: soon\n"
            "<<: *bad\n",
        },
    ) == [
        "policies/r.yaml:5: Route a: match.prefix: 'nope' must start with '/'",
        "policies/r.yaml:6: Route a: unknown field 'x'",
        "policies/r.yaml:7: Route a: timeout: 'soon' is not a duration such as 250ms, 1s, 5m or 1h",
    ]


def test_referenced_files_are_loaded(policies: Path) -> None:
    write(
        policies,
        {
            "gw.yaml": "kind: Gateway\nname: g\nport: 9443\n"
            "tls: {cert: ./certs/api.pem, key: certs/api-key.pem, client_ca: certs/ca.pem}\n",
            "auth.yaml": "kind: AuthPolicy\nname: a\nidentity:\n  - jwt: {issuer: i, jwks: keys/jwks.json}\n"
            "  - jwt: {issuer: j, jwks: 'https://idp.example.com/.well-known/jwks.json'}\n",
            "certs/api.pem": (CERTS / "api.pem").read_bytes(),
            "certs/api-key.pem": (CERTS / "api-key.pem").read_bytes(),
            "certs/ca.pem": (CERTS / "ca.pem").read_bytes(),
            "keys/jwks.json": (SPEC_EXAMPLES / "keys" / "jwks.json").read_bytes(),
        },
    )
    loaded = load_policies("policies")
    # Keyed by the path exactly as the policy spells it.
    assert set(loaded.files) == {"./certs/api.pem", "certs/api-key.pem", "certs/ca.pem", "keys/jwks.json"}
    assert loaded.files["./certs/api.pem"] == (CERTS / "api.pem").read_bytes()
    assert isinstance(loaded.files["certs/api-key.pem"], PrivateBytes)
    assert "BEGIN" not in str(loaded.files["certs/api-key.pem"])


def test_deeply_nested_yaml_does_not_crash(policies: Path) -> None:
    # libyaml's own composer recurses in C and crashes the process at this depth.
    # Which layer refuses it (libyaml's own depth limit, or waypost's) depends on the libyaml
    # build; what matters is one error at the file and line, and no crash.
    nested = "kind: Gateway\nname: g\nport: 9000\nnodes:\n  " + "- " * 40_000 + "x\n"
    (error,) = problems(policies, {"t.yaml": nested})
    assert error.startswith("policies/t.yaml:5: ")
    assert "nest" in error


def test_nesting_past_the_model_depth_is_an_error(policies: Path) -> None:
    nested = "kind: Gateway\nname: g\nport: 9000\nnodes:\n  " + "- " * 100 + "x\n"
    assert problems(policies, {"t.yaml": nested}) == [
        "policies/t.yaml:5: Gateway g: nodes: nested more than 64 levels deep"
    ]


def test_alias_bomb_is_refused_quickly(policies: Path) -> None:
    lines = ["kind: Gateway", "name: g", "port: 9000", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    found = problems(policies, {"t.yaml": "\n".join(lines) + "\n"})
    assert found == ["policies/t.yaml:1: Gateway g: more than 1000000 values once aliases are expanded"]


# --- version ---------------------------------------------------------------------------------------


def _copy_of_spec(tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(SPEC_EXAMPLES, target)
    return target


def test_version_is_the_same_for_the_same_content(tmp_path: Path) -> None:
    first = load_policies(_copy_of_spec(tmp_path, "one")).version
    second = load_policies(str(_copy_of_spec(tmp_path, "two/nested"))).version
    assert first == second == load_policies(SPEC_EXAMPLES).version
    assert len(first) == 64 and int(first, 16) >= 0


@pytest.mark.parametrize("changed", ["routes.yaml", "certs/api.pem", "keys/jwks.json"])
def test_version_changes_with_one_byte(tmp_path: Path, changed: str) -> None:
    original = load_policies(_copy_of_spec(tmp_path, "one")).version
    copy = _copy_of_spec(tmp_path, "two")
    (copy / changed).write_bytes((copy / changed).read_bytes() + b"\n")
    assert load_policies(copy).version != original


def test_version_ignores_unreferenced_files(tmp_path: Path) -> None:
    original = load_policies(_copy_of_spec(tmp_path, "one")).version
    copy = _copy_of_spec(tmp_path, "two")
    (copy / "README.md").write_text("notes")
    (copy / "certs" / "client.pem").write_text("changed")
    assert load_policies(copy).version == original


def test_version_depends_on_file_names(tmp_path: Path) -> None:
    original = load_policies(_copy_of_spec(tmp_path, "one")).version
    copy = _copy_of_spec(tmp_path, "two")
    os.rename(copy / "routes.yaml", copy / "routes2.yaml")
    assert load_policies(copy).version != original


# --- robustness ------------------------------------------------------------------------------------

_KEYS = st.sampled_from(
    ["kind", "name", "port", "match", "prefix", "backend", "backends", "endpoints", "tls", "cert", "<<", "on"]
)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True)
    | st.sampled_from(
        ["Gateway", "Route", "Service", "Consumer", "AuthPolicy", "RateLimitPolicy", "/x", "1s"]
    )
    | st.text(max_size=12)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(_KEYS | st.text(max_size=6), inner, max_size=5)
    ),
    max_leaves=25,
)
_JUNK_LINES = st.lists(
    st.sampled_from(
        [
            "kind: Route",
            "name: r",
            "---",
            "- a",
            "  b: [",
            "&a x",
            "*a",
            "<<: *a",
            "? x",
            ": y",
            "!!int z",
            "\t",
            "{",
            "'",
        ]
    )
    | st.text(max_size=20),
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        _JUNK_LINES.map(lambda lines: "\n".join(lines).encode()),
        st.lists(_VALUES, min_size=1, max_size=3).map(
            lambda docs: yaml.safe_dump_all(docs, allow_unicode=True).encode()
        ),
    )
)
def test_junk_never_raises_anything_but_policy_error(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "junk.yaml").write_bytes(content)
        try:
            result = load_policies(directory)
        except PolicyError as exc:
            assert exc.diagnostics
            assert all(d.path.startswith(directory) and d.line >= 0 for d in exc.diagnostics)
        else:
            assert isinstance(result, PolicySet)
