"""Cross-document checks: references, duplicates, conflicts, sockets, keys and RE2 regexes."""

from __future__ import annotations

from pathlib import Path

import pytest

from waypost.policies import Diagnostic, PolicyError, load_policies
from waypost.policies.model import Route, Service
from waypost.policies.validate import Entry, Loc, regex_problem, validate

# Valid documents every case can refer to (policies/base.yaml, lines 1-17).
BASE = """\
kind: Gateway
name: public
port: 8080
---
kind: Service
name: orders
endpoints: ["10.0.0.5:9001"]
---
kind: AuthPolicy
name: keys
identity: [{api_key: {}}]
---
kind: RateLimitPolicy
name: standard
limits: [{by: consumer, requests: 10, per: second}]
---
kind: Route
name: base
gateway: public
hosts: [api.example.com]
match: {prefix: /base}
backend: orders
"""
BASE_ROUTE_LINE = 18

KEY_A = "sha256:" + "a" * 64
KEY_B = "sha256:" + "b" * 64

Files = dict[str, str]


def route(name: str, *, match: str = "{prefix: /x}", more: str = "") -> str:
    return f"kind: Route\nname: {name}\ngateway: public\nmatch: {match}\nbackend: orders\n{more}"


def check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: Files) -> list[str]:
    monkeypatch.chdir(tmp_path)
    for relative, content in {"base.yaml": BASE, **files}.items():
        target = tmp_path / "policies" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    try:
        load_policies("policies")
    except PolicyError as exc:
        return [str(diagnostic) for diagnostic in exc.diagnostics]
    return []


def case(files: Files, *expected: str, id: str) -> object:
    return pytest.param(files, list(expected), id=id)


CASES = [
    # --- dangling references ----------------------------------------------------------------------
    case(
        {"t.yaml": "kind: Route\nname: r\ngateway: pub\nmatch: {prefix: /x}\nbackend: orders\n"},
        "policies/t.yaml:3: Route r: gateway 'pub' is not a Gateway",
        id="gateway",
    ),
    case(
        {"routes.yaml": "\n" * 9 + route("orders").replace("backend: orders", "backend: ordrs")},
        "policies/routes.yaml:14: Route orders: backend 'ordrs' is not a Service",
        id="backend-spec-example",
    ),
    case(
        {
            "t.yaml": route("r").replace(
                "backend: orders\n", "backends:\n  - {service: orders}\n  - {service: v2}\n"
            )
        },
        "policies/t.yaml:7: Route r: backends[1].service 'v2' is not a Service",
        id="backends",
    ),
    case(
        {"t.yaml": route("r", more="auth: nope\n")},
        "policies/t.yaml:6: Route r: auth 'nope' is not an AuthPolicy",
        id="auth",
    ),
    case(
        {"t.yaml": route("r", more="auth: [keys, nope]\n")},
        "policies/t.yaml:6: Route r: auth[1] 'nope' is not an AuthPolicy",
        id="auth-list",
    ),
    case(
        {"t.yaml": route("r", more="rate_limit: premium\n")},
        "policies/t.yaml:6: Route r: rate_limit 'premium' is not a RateLimitPolicy",
        id="rate-limit",
    ),
    case(
        {"t.yaml": route("r", more="rate_limit:\n  - standard\n  - premium\n")},
        "policies/t.yaml:8: Route r: rate_limit[1] 'premium' is not a RateLimitPolicy",
        id="rate-limit-list",
    ),
    case(
        {
            "t.yaml": "kind: Consumer\nname: c\nsubscriptions:\n  - {route: base, status: approved}\n"
            "  - {route: paymnts, status: pending}\n"
        },
        "policies/t.yaml:5: Consumer c: subscriptions[1].route 'paymnts' is not a Route",
        id="subscription",
    ),
    case(
        # A reference names the kind it expects: a Service named like a Gateway does not count.
        {"t.yaml": "kind: Route\nname: r\ngateway: orders\nmatch: {prefix: /x}\nbackend: public\n"},
        "policies/t.yaml:3: Route r: gateway 'orders' is not a Gateway",
        "policies/t.yaml:5: Route r: backend 'public' is not a Service",
        id="wrong-kind",
    ),
    case(
        # The Service is invalid (reported) but exists: no second, misleading error on the Route.
        {
            "t.yaml": route("r").replace("backend: orders", "backend: broken")
            + "---\nkind: Service\nname: broken\nendpoints: [nowhere]\n"
        },
        "policies/t.yaml:9: Service broken: endpoints[0]: 'nowhere' is not 'host:port'",
        id="reference-to-invalid-document",
    ),
    case(
        # A file that does not parse may hold the target: references wait for it to be fixed.
        {"t.yaml": route("r").replace("backend: orders", "backend: elsewhere"), "u.yaml": "kind: [\n"},
        "policies/u.yaml:2: invalid YAML: did not find expected node content (while parsing a flow node"
        " at line 2)",
        id="references-skipped-after-syntax-error",
    ),
    # --- duplicate names --------------------------------------------------------------------------
    case(
        {"t.yaml": "kind: Service\nname: orders\nendpoints: ['10.0.0.7:80']\n"},
        "policies/t.yaml:2: Service orders: duplicate Service name, first defined at policies/base.yaml:6",
        id="duplicate-across-files",
    ),
    case(
        {"t.yaml": route("a") + "---\n" + route("a", match="{prefix: /y}")},
        "policies/t.yaml:8: Route a: duplicate Route name, first defined at policies/t.yaml:2",
        id="duplicate-in-one-file",
    ),
    case(
        {"t.yaml": "kind: Service\nname: public\nendpoints: ['10.0.0.7:80']\n"},
        id="same-name-other-kind-is-fine",
    ),
    # --- conflicting routes -----------------------------------------------------------------------
    case(
        {"t.yaml": route("r", match="{prefix: /base}", more="hosts: [api.example.com]\n")},
        f"policies/t.yaml:4: Route r: conflicts with Route base (policies/base.yaml:{BASE_ROUTE_LINE}):"
        " same gateway 'public', host 'api.example.com' and match",
        id="conflict",
    ),
    case(
        {
            "t.yaml": route("a", match="{path: /p, methods: [GET, POST], headers: {X-Tenant: t}}")
            + "---\n"
            + route(
                "b", match="{path: /p, methods: [POST, GET], headers: {x-tenant: t}}", more="hosts: ['*']\n"
            )
        },
        "policies/t.yaml:10: Route b: conflicts with Route a (policies/t.yaml:2): same gateway 'public',"
        " host '*' and match",
        id="conflict-methods-and-header-names-unordered",
    ),
    case(
        {"t.yaml": route("r", match="{prefix: /base}", more="hosts: [other.example.com, API.example.com]\n")},
        f"policies/t.yaml:4: Route r: conflicts with Route base (policies/base.yaml:{BASE_ROUTE_LINE}):"
        " same gateway 'public', host 'api.example.com' and match",
        id="conflict-on-one-shared-host",
    ),
    case(
        {
            "t.yaml": route("a", match="{prefix: /base, methods: [GET]}", more="hosts: [api.example.com]\n")
            + "---\n"
            + route("b", match="{path: /base}", more="hosts: [api.example.com]\n")
            + "---\n"
            + route("c", match="{prefix: /base}")
            + "---\n"
            + route("d", match="{prefix: /base, headers: {x-v: '2'}}", more="hosts: [api.example.com]\n")
        },
        id="no-conflict-different-match-host-or-headers",
    ),
    case(
        {
            "t.yaml": "kind: Gateway\nname: other\nport: 9000\n---\n"
            + route("r", match="{prefix: /base}", more="hosts: [api.example.com]\n").replace(
                "public", "other"
            )
        },
        id="no-conflict-other-gateway",
    ),
    # --- gateways on one socket -------------------------------------------------------------------
    case(
        {"t.yaml": "kind: Gateway\nname: second\nport: 8080\n"},
        "policies/t.yaml:3: Gateway second: port 8080 on 0.0.0.0 is already used by Gateway public"
        " (policies/base.yaml:2) on the same nodes",
        id="gateway-same-port",
    ),
    case(
        {
            "t.yaml": "kind: Gateway\nname: a\nport: 9000\nnodes: {cluster: edge}\n---\n"
            "kind: Gateway\nname: b\nport: 9000\naddress: '0.0.0.0'\n"
            "nodes: {cluster: edge, labels: {zone: a}}\n"
        },
        "policies/t.yaml:8: Gateway b: port 9000 on 0.0.0.0 is already used by Gateway a"
        " (policies/t.yaml:2) on the same nodes",
        id="gateway-overlapping-selectors",
    ),
    case(
        {
            "t.yaml": "kind: Gateway\nname: a\nport: 9000\nnodes: {labels: {zone: a}}\n---\n"
            "kind: Gateway\nname: b\nport: 9000\nnodes: {labels: {tier: x}}\n"
        },
        "policies/t.yaml:8: Gateway b: port 9000 on 0.0.0.0 is already used by Gateway a"
        " (policies/t.yaml:2) on the same nodes",
        id="gateway-different-label-keys-overlap",
    ),
    case(
        {
            "t.yaml": "kind: Gateway\nname: a\nport: 9000\nnodes: {cluster: edge}\n---\n"
            "kind: Gateway\nname: b\nport: 9000\nnodes: {cluster: internal}\n---\n"
            "kind: Gateway\nname: c\nport: 9001\nnodes: {labels: {zone: a}}\n---\n"
            "kind: Gateway\nname: d\nport: 9001\nnodes: {labels: {zone: b}}\n---\n"
            "kind: Gateway\nname: e\nport: 8080\naddress: 127.0.0.1\n"
        },
        id="gateway-disjoint-selectors-or-addresses",
    ),
    case(
        {"t.yaml": "kind: Gateway\nname: a\nport: 9000\naddress: 'localhost'\n"},
        "policies/t.yaml:4: Gateway a: address: 'localhost' is not an IP address",
        id="gateway-address-not-ip",
    ),
    # --- consumers --------------------------------------------------------------------------------
    case(
        {
            "t.yaml": f"kind: Consumer\nname: a\napi_keys: ['{KEY_A}']\n---\n"
            f"kind: Consumer\nname: b\napi_keys:\n  - '{KEY_B}'\n  - '{KEY_A}'\n"
        },
        "policies/t.yaml:9: Consumer b: api_keys[1]: key already belongs to Consumer a (policies/t.yaml:2)",
        id="api-key-on-two-consumers",
    ),
    case(
        {"t.yaml": f"kind: Consumer\nname: a\napi_keys: ['{KEY_A}', '{KEY_A}']\n"},
        "policies/t.yaml:3: Consumer a: api_keys[1]: same key as api_keys[0]",
        id="api-key-twice",
    ),
    case(
        {
            "t.yaml": "kind: Consumer\nname: a\nsubscriptions:\n  - {route: base, status: approved}\n"
            "  - {route: base, status: revoked}\n"
        },
        "policies/t.yaml:5: Consumer a: subscriptions[1].route: route 'base' is already in subscriptions[0]",
        id="subscription-twice",
    ),
    # --- regexes ----------------------------------------------------------------------------------
    case(
        {"t.yaml": route("r", match="\n  regex: '/v1/(orders'")},
        "policies/t.yaml:5: Route r: match.regex: invalid regular expression (RE2): missing ): /v1/(orders",
        id="regex-invalid",
    ),
    case(
        {"t.yaml": route("r", match="{regex: '/v1/(?!admin).*'}")},
        "policies/t.yaml:4: Route r: match.regex: negative lookahead '(?!' is not supported by Envoy's"
        " RE2 engine",
        id="regex-lookahead",
    ),
    case(
        {"t.yaml": route("r", match="{regex: '/(a+)/\\1'}")},
        "policies/t.yaml:4: Route r: match.regex: backreference '\\1' is not supported by Envoy's RE2 engine",
        id="regex-backreference",
    ),
]


@pytest.mark.parametrize(("files", "expected"), CASES)
def test_cross_document_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: Files, expected: list[str]
) -> None:
    assert check(tmp_path, monkeypatch, files) == expected


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("/v1/[a-z]+/orders", None),
        ("(?i)/v1/(?P<id>[0-9]+)$", None),
        ("/v1/\\(?=x", None),  # an escaped parenthesis: no lookahead
        ("[(?=]", None),  # inside a class: no lookahead
        ("[]?(?=]", None),  # ']' first in a class is a member
        ("x}+", None),  # a literal brace, then a quantifier
        ("\\\\1", None),  # an escaped backslash, then '1'
        ("(?=a)", "lookahead '(?=' is not supported by Envoy's RE2 engine"),
        ("(?<=a)b", "lookbehind '(?<=' is not supported by Envoy's RE2 engine"),
        ("(?<!a)b", "negative lookbehind '(?<!' is not supported by Envoy's RE2 engine"),
        ("(a)\\1", "backreference '\\1' is not supported by Envoy's RE2 engine"),
        ("(?P<x>a)(?P=x)", "backreference '(?P=' is not supported by Envoy's RE2 engine"),
        ("(?>a+)b", "atomic group '(?>' is not supported by Envoy's RE2 engine"),
        ("(a)?(?(1)b|c)", "conditional group '(?(' is not supported by Envoy's RE2 engine"),
        ("a++", "possessive quantifier '++' is not supported by Envoy's RE2 engine"),
        ("a{2}+", "possessive quantifier '}+' is not supported by Envoy's RE2 engine"),
        ("(?x)a b", "inline flags '(?x' are not supported by Envoy's RE2 engine"),
        ("abc\\Z", "'\\Z' is not supported by Envoy's RE2 engine: use '$'"),
        ("a{1,2", None),  # a literal in both engines
        ("*a", "invalid regular expression (RE2): no argument for repetition operator: *"),
        ("a{2000}", "invalid regular expression (RE2): invalid repetition size: {2000}"),
        ("a" * 4092, None),  # RE2 program size 4096: the limit waypost's bootstraps set
        (
            "a" * 4093,
            "regular expression too complex for Envoy: RE2 program size 4097 > 4096"
            " (shorten it, or split it into several patterns)",
        ),
        ("[[:alpha:]]+\\p{Greek}", None),  # RE2 classes Python lacks
    ],
)
def test_regex_problem(pattern: str, problem: str | None) -> None:
    assert regex_problem(pattern) == problem


class FakeSource:
    """Lines without files: validate() needs only a path and a line for each field."""

    def __init__(self, path: str, lines: dict[Loc, int]) -> None:
        self.path = path
        self.lines = lines

    def line_of(self, loc: Loc) -> int:
        return self.lines.get(loc, 1)


def test_validate_is_pure_and_works_on_any_source() -> None:
    route = Route.model_validate({"name": "r", "gateway": "g", "match": {"prefix": "/"}, "backend": "s"})
    service = Service.model_validate({"name": "s", "endpoints": ["10.0.0.1:80"]})
    entries = [
        Entry("Route", "r", FakeSource("a.yaml", {("gateway",): 3}), route),
        Entry("Service", "s", FakeSource("a.yaml", {("name",): 9}), service),
        Entry("Service", "s", FakeSource("b.yaml", {("name",): 2}), None),
    ]
    assert validate(entries) == [
        Diagnostic("b.yaml", 2, "Service", "s", "duplicate Service name, first defined at a.yaml:9"),
        Diagnostic("a.yaml", 3, "Route", "r", "gateway 'g' is not a Gateway"),
    ]
    assert validate(entries, check_references=False) == validate(entries)[:1]
