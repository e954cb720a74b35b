"""The decision services' clusters come over CDS/EDS, to the node groups that need them only.

Compiler level (no processes): which routes need which decision cluster, how named addresses
become health-checked endpoints, and that the result passes `envoy --mode validate`.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml

from waypost.contract import AUTHZ_CLUSTER, AUTHZ_HTTP_CLUSTER, RATELIMIT_CLUSTER
from waypost.policies.loader import load_policies
from waypost.policies.model import PolicySet
from waypost.policies.types import Endpoint
from waypost.xds.compiler import DecisionEndpoints, compile_policy
from waypost.xds.render import static_bootstrap
from waypost.xds.types import TypeUrl

POLICY = """
kind: Gateway
name: auth
port: 8001
nodes: {cluster: auth}
---
kind: Gateway
name: fast
port: 8002
nodes: {cluster: fast}
auth_service: http
---
kind: Gateway
name: plain
port: 8003
nodes: {cluster: plain}
---
kind: Service
name: echo
endpoints: ["10.0.0.5:9001"]
---
kind: Route
name: orders
gateway: auth
match: {prefix: /orders}
backend: echo
auth: keys
rate_limit: per-consumer
---
kind: Route
name: fast-orders
gateway: fast
match: {prefix: /orders}
backend: echo
auth: keys
---
kind: Route
name: open
gateway: plain
match: {prefix: /}
backend: echo
rate_limit: per-ip-local
---
kind: AuthPolicy
name: keys
identity: [{api_key: {header: x-api-key}}]
---
kind: RateLimitPolicy
name: per-consumer
# The consumer limit is counted by ext_authz itself (one hop); the header one still needs the RLS.
limits: [{by: consumer, requests: 10, per: minute}, {by: "header:x-tenant", requests: 100, per: minute}]
---
kind: RateLimitPolicy
name: per-ip-local
limits: [{by: client_ip, requests: 10, per: second, scope: local}]
"""


def load(tmp_path: Path) -> PolicySet:
    (tmp_path / "p").mkdir(exist_ok=True)
    (tmp_path / "p" / "policy.yaml").write_text(textwrap.dedent(POLICY))
    return load_policies(tmp_path / "p")


def test_each_group_gets_only_the_decision_clusters_its_routes_need(tmp_path: Path) -> None:
    compiled = compile_policy(load(tmp_path))
    assert compiled.decision_needs == {
        "orders": frozenset({AUTHZ_CLUSTER, RATELIMIT_CLUSTER}),
        "fast-orders": frozenset({AUTHZ_HTTP_CLUSTER}),
    }
    for cluster, expected in (
        ("auth", {AUTHZ_CLUSTER, RATELIMIT_CLUSTER}),
        ("fast", {AUTHZ_HTTP_CLUSTER}),
        ("plain", set()),  # a local limit never leaves Envoy
    ):
        resources = compiled.resources_for(compiled.select_gateways(cluster, {}))
        assert {n for n in resources[TypeUrl.CLUSTER] if n.startswith("waypost_")} == expected
        # Nothing serves them yet: EDS with no endpoint, never a cluster the filters name but CDS lacks.
        for name in expected:
            assert not resources[TypeUrl.ENDPOINT][name].endpoints


def test_named_addresses_are_health_checked_endpoints(tmp_path: Path, envoy_bin: Path) -> None:
    endpoints = DecisionEndpoints(
        endpoints={
            AUTHZ_CLUSTER: (Endpoint("10.0.0.7", 9191), Endpoint("10.0.0.8", 9191)),
            AUTHZ_HTTP_CLUSTER: (Endpoint("authz.internal", 9192),),
            RATELIMIT_CLUSTER: (Endpoint("10.0.0.9", 18001),),
        },
        health_checked=frozenset({AUTHZ_CLUSTER, AUTHZ_HTTP_CLUSTER}),
    )
    compiled = compile_policy(load(tmp_path), decisions=endpoints)
    authz = compiled.clusters[AUTHZ_CLUSTER]
    assert authz.type == authz.EDS
    (check,) = authz.health_checks
    assert check.grpc_health_check.service_name == "envoy.service.auth.v3.Authorization"
    addresses = [
        e.endpoint.address.socket_address.address
        for e in compiled.load_assignments[AUTHZ_CLUSTER].endpoints[0].lb_endpoints
    ]
    assert addresses == ["10.0.0.7", "10.0.0.8"]
    http = compiled.clusters[AUTHZ_HTTP_CLUSTER]
    assert http.type == http.STRICT_DNS  # a name: Envoy resolves it, EDS cannot carry it
    assert http.health_checks[0].http_health_check.path == "/healthz"
    assert AUTHZ_HTTP_CLUSTER not in compiled.load_assignments
    assert not compiled.clusters[RATELIMIT_CLUSTER].health_checks  # not named: not checked
    for cluster in ("auth", "fast"):
        config = tmp_path / f"{cluster}.yaml"
        resources = compiled.resources_for(compiled.select_gateways(cluster, {}))
        config.write_text(yaml.safe_dump(static_bootstrap(resources)))
        proc = subprocess.run(
            [str(envoy_bin), "--mode", "validate", "-c", str(config), "-l", "error"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_unimportable_plugin_is_a_file_line_error_where_it_loads(tmp_path: Path) -> None:
    from waypost.filters.authz.core import AuthzCore
    from waypost.policies.diagnostics import PolicyError

    directory = tmp_path / "p"
    directory.mkdir()
    (directory / "policy.yaml").write_text(
        textwrap.dedent(POLICY)
        + textwrap.dedent("""
            ---
            kind: AuthPolicy
            name: custom
            identity:
              - api_key: {}
              - custom: {plugin: "no_such_waypost_plugin:check"}
            """)
    )
    policy = load_policies(directory)  # the model is fine: importing is the decision service's job
    core = AuthzCore()
    with pytest.raises(PolicyError) as caught:
        core.prepare(policy)
    (problem,) = caught.value.diagnostics
    assert (problem.path, problem.kind, problem.name) == (
        str(directory / "policy.yaml"),
        "AuthPolicy",
        "custom",
    )
    text = (directory / "policy.yaml").read_text().splitlines()
    assert problem.line == next(n for n, line in enumerate(text, 1) if "no_such_waypost_plugin" in line)
    assert str(problem).endswith(
        "identity[1].custom.plugin: cannot import module 'no_such_waypost_plugin': "
        "No module named 'no_such_waypost_plugin'"
    )
    assert core.version is None  # refused: nothing applied


def test_validate_reports_an_unimportable_plugin_where_it_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from waypost.cli import main

    directory = tmp_path / "p"
    directory.mkdir()
    plugin_policy = textwrap.dedent(POLICY) + textwrap.dedent("""
        ---
        kind: AuthPolicy
        name: custom
        identity: [{custom: {plugin: "wp_local_plugin:check"}}]
        """)
    (directory / "policy.yaml").write_text(plugin_policy)
    assert main(["validate", str(directory)]) == 1
    err = capsys.readouterr().err
    assert f"{directory / 'policy.yaml'}:" in err
    assert "AuthPolicy custom: identity[0].custom.plugin: cannot import module 'wp_local_plugin'" in err
    # Where the plugin lives (on the path), the same directory is valid.
    (tmp_path / "wp_local_plugin.py").write_text("def check(request):\n    return None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["validate", str(directory)]) == 0, capsys.readouterr().err


async def test_own_services_are_announced_at_the_advertise_address() -> None:
    from waypost.server.decisions import DecisionOptions, DecisionPlane, default_advertise_address
    from waypost.server.ratelimit import RateLimitOptions

    assert default_advertise_address("127.0.0.1") == "127.0.0.1"
    assert default_advertise_address("0.0.0.0") != "0.0.0.0"  # an address Envoys can dial
    plane = DecisionPlane(
        DecisionOptions(
            host="127.0.0.1",
            advertise_address="10.9.8.7",
            authz_port=0,
            authz_http_port=0,
            ratelimit=RateLimitOptions(port=0, host="127.0.0.1"),
            ratelimit_addresses=(Endpoint("rls.internal", 18001),),
        )
    )
    await plane.open()
    try:
        await plane.ensure(frozenset({AUTHZ_CLUSTER, RATELIMIT_CLUSTER}))
        endpoints = plane.endpoints()
        (authz,) = endpoints.endpoints[AUTHZ_CLUSTER]
        assert (
            authz.host == "10.9.8.7" and authz.port == plane.status()["clusters"][AUTHZ_CLUSTER]["local_port"]
        )
        # Named elsewhere: never run here, and health-checked.
        assert endpoints.endpoints[RATELIMIT_CLUSTER] == (Endpoint("rls.internal", 18001),)
        assert endpoints.health_checked == frozenset({RATELIMIT_CLUSTER})
        assert plane.limiter is None
        assert AUTHZ_HTTP_CLUSTER not in endpoints.endpoints  # not needed: not started
    finally:
        await plane.close()
