"""Teams: scoped names, grants, cross-team references, and the isolation property."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from waypost.policies import PolicyError, load_policies
from waypost.policies.teams import scoped

PLATFORM = """\
kind: Gateway
name: edge
port: 8080
---
kind: AuthPolicy
name: keys
shared: true
identity: [{api_key: {}}]
---
kind: RateLimitPolicy
name: internal
limits: [{by: client_ip, requests: 10, per: second}]
---
kind: Team
name: payments
folders: [teams/payments]
owners: ["@acme/payments"]
gateways:
  - gateway: edge
    hosts: [{host: pay.example.com}, {host: api.example.com, path_prefix: /payments}]
upstreams: [10.1.0.0/16, "*.payments.svc"]
plans: [gold]
limits: {routes: 3}
---
kind: Team
name: search
folders: [teams/search]
owners: ["@acme/search"]
gateways:
  - gateway: edge
    hosts: [{host: api.example.com, path_prefix: /search}]
upstreams: [10.2.0.0/16]
"""


def team_docs(team: str, net: str, host: str, prefix: str, extra: str = "") -> str:
    return f"""\
kind: Service
name: orders
endpoints: ["10.{net}.0.5:9001"]
---
kind: Route
name: orders
gateway: edge
hosts: [{host}]
match: {{prefix: {prefix}}}
backend: orders
auth: keys
{extra}"""


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def repo(tmp_path: Path, payments: str | None = None, search: str | None = None) -> Path:
    return write(
        tmp_path,
        {
            "platform.yaml": PLATFORM,
            "teams/payments/policy.yaml": payments
            or team_docs("payments", "1", "api.example.com", "/payments"),
            "teams/search/policy.yaml": search or team_docs("search", "2", "api.example.com", "/search"),
        },
    )


def errors(directory: Path) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load_policies(directory)
    return [str(d).removeprefix(f"{directory}/") for d in caught.value.diagnostics]


def test_colliding_names_across_teams_coexist(tmp_path: Path) -> None:
    policy = load_policies(repo(tmp_path))
    assert set(policy.services) == {"payments~orders", "search~orders"}
    assert set(policy.routes) == {"payments~orders", "search~orders"}
    route = policy.routes[scoped("payments", "orders")]
    assert route.backend == "payments~orders"
    assert route.auth == "keys"  # the platform's shared AuthPolicy keeps its name
    assert set(policy.teams) == {"payments", "search"}


def test_host_not_granted(tmp_path: Path) -> None:
    broken = team_docs("search", "2", "pay.example.com", "/search")
    assert errors(repo(tmp_path, search=broken)) == [
        "teams/search/policy.yaml:8: Route orders: hosts[0]: team search: host 'pay.example.com' is not"
        " granted on Gateway edge (grant lacking: gateways[].hosts)"
    ]


def test_path_outside_prefix(tmp_path: Path) -> None:
    broken = team_docs("search", "2", "api.example.com", "/payments/refunds")
    assert errors(repo(tmp_path, search=broken)) == [
        "teams/search/policy.yaml:9: Route orders: match.prefix: team search: matches paths outside"
        " the team's path prefix on host 'api.example.com' (granted: '/search')"
    ]


def test_service_outside_upstreams(tmp_path: Path) -> None:
    broken = team_docs("search", "1", "api.example.com", "/search")
    assert errors(repo(tmp_path, search=broken)) == [
        "teams/search/policy.yaml:3: Service orders: endpoints[0]: team search: '10.1.0.5' is outside"
        " the team's upstreams (grant lacking: upstreams)"
    ]


def test_reference_across_teams(tmp_path: Path) -> None:
    search = (
        team_docs("search", "2", "api.example.com", "/search")
        + "---\n"
        + (
            "kind: Route\nname: steal\ngateway: edge\nhosts: [api.example.com]\n"
            "match: {prefix: /search/pay}\nbackend: refunds\n"
        )
    )
    payments = team_docs("payments", "1", "api.example.com", "/payments") + (
        "---\nkind: Service\nname: refunds\nendpoints: ['10.1.0.6:9001']\n"
    )
    assert errors(repo(tmp_path, payments=payments, search=search)) == [
        "teams/search/policy.yaml:18: Route steal: backend: team search: 'refunds' is a Service of team"
        " payments: a team may refer only to its own documents and shared ones"
    ]


def test_platform_document_not_shared(tmp_path: Path) -> None:
    search = team_docs("search", "2", "api.example.com", "/search", "rate_limit: internal\n")
    assert errors(repo(tmp_path, search=search)) == [
        "teams/search/policy.yaml:12: Route orders: rate_limit: team search: 'internal' is a platform"
        " RateLimitPolicy not marked shared: a team may refer only to its own documents and shared"
        " ones (grant lacking: shared: true on RateLimitPolicy internal)"
    ]


def test_team_cannot_define_gateways_or_plans_or_exceed_limits(tmp_path: Path) -> None:
    payments = (
        team_docs("payments", "1", "api.example.com", "/payments")
        + "".join(
            f"---\nkind: Route\nname: r{i}\ngateway: edge\nhosts: [pay.example.com]\n"
            f"match: {{prefix: /r{i}}}\nbackend: orders\n"
            for i in range(3)
        )
        + "---\nkind: Gateway\nname: own\nport: 9090\n---\nkind: Consumer\nname: c\nplan: platinum\n"
    )
    found = errors(repo(tmp_path, payments=payments))
    assert found == [
        "teams/payments/policy.yaml:28: Route r2: team payments: more than 3 Routes (grant lacking: limits)",
        "teams/payments/policy.yaml:34: Gateway own: kind: team payments: a team may define only Api,"
        " AuthPolicy, Consumer, RateLimitPolicy, Route, Service; Gateway is the platform's",
        "teams/payments/policy.yaml:40: Consumer c: plan: team payments: plan 'platinum' is not granted"
        " (grant lacking: plans)",
    ]


def test_overlapping_grants_are_refused(tmp_path: Path) -> None:
    platform = PLATFORM.replace("path_prefix: /search", "path_prefix: /pay")
    write(tmp_path, {"platform.yaml": platform})
    found = errors(tmp_path)
    assert any(
        "gateways[0].hosts[0]: host 'api.example.com' path '/pay' overlaps team payments's"
        " 'api.example.com' path '/payments' on Gateway edge" in line
        for line in found
    ), found


def test_team_files_stay_in_the_team_folder(tmp_path: Path) -> None:
    payments = team_docs("payments", "1", "api.example.com", "/payments") + (
        "---\nkind: Service\nname: tls\nendpoints: ['10.1.0.7:443']\ntls: {ca: ../../platform/ca.pem}\n"
    )
    found = errors(repo(tmp_path, payments=payments))
    assert found[0].endswith("tls.ca: team payments: '../../platform/ca.pem' is outside the team's folders")


def test_validate_cli_names_the_team(tmp_path: Path) -> None:
    broken = team_docs("search", "2", "pay.example.com", "/search")
    result = subprocess.run(
        [sys.executable, "-m", "waypost", "validate", str(repo(tmp_path, search=broken))],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "team search: host 'pay.example.com' is not granted" in result.stdout + result.stderr


# --- per-team last good (the policy runtime, without appliers) ---------------------------------


async def test_runtime_holds_only_the_broken_team(tmp_path: Path) -> None:
    from waypost.server.runtime import PolicyRuntime

    directory = repo(tmp_path)
    runtime = PolicyRuntime(directory, [])
    assert await runtime.reload()
    # payments breaks and adds a route; search adds one: search moves on, payments is held.
    broken = team_docs("payments", "9", "api.example.com", "/payments") + (
        "---\nkind: Route\nname: extra\ngateway: edge\nhosts: [pay.example.com]\n"
        "match: {prefix: /}\nbackend: orders\n"
    )
    moved = team_docs("search", "2", "api.example.com", "/search") + (
        "---\nkind: Route\nname: extra\ngateway: edge\nhosts: [api.example.com]\nmatch: {prefix: /search/x}\n"
        "backend: orders\n"
    )
    write(directory, {"teams/payments/policy.yaml": broken, "teams/search/policy.yaml": moved})
    assert await runtime.reload()
    assert runtime.current is not None
    assert set(runtime.current.routes) == {"payments~orders", "search~orders", "search~extra"}
    assert runtime.current.services["payments~orders"].endpoints[0].host == "10.1.0.5"  # the last good
    status = runtime.lanes.status(runtime.current.teams)
    assert status["payments"]["state"] == "held"
    assert status["payments"]["errors"] == [
        f"{directory}/teams/payments/policy.yaml:3: Service orders: endpoints[0]: team payments:"
        " '10.9.0.5' is outside the team's upstreams (grant lacking: upstreams)"
    ]
    assert status["search"] == {"state": "serving", "owners": ["@acme/search"]}
    assert runtime.last_failure is None
    # The same broken files again: nothing new to apply, payments still held.
    assert not await runtime.reload()
    assert runtime.lanes.status(runtime.current.teams)["payments"]["state"] == "held"
    # Fixed: payments moves on.
    write(directory, {"teams/payments/policy.yaml": team_docs("payments", "1", "pay.example.com", "/")})
    assert await runtime.reload()
    assert runtime.lanes.held == {}
    runtime.lanes.close()


async def test_runtime_refuses_the_whole_change_when_the_platform_breaks(tmp_path: Path) -> None:
    from waypost.server.runtime import PolicyRuntime

    directory = repo(tmp_path)
    runtime = PolicyRuntime(directory, [])
    assert await runtime.reload()
    version = runtime.version
    write(
        directory,
        {
            "platform.yaml": PLATFORM + "---\nkind: Service\nname: bad\n",
            "teams/search/policy.yaml": team_docs("search", "9", "api.example.com", "/search"),
        },
    )
    assert not await runtime.reload()
    assert runtime.version == version
    assert runtime.last_failure is not None
    assert any("platform.yaml" in e for e in runtime.last_failure.errors)
    runtime.lanes.close()


async def test_a_team_broken_from_the_start_serves_nothing_and_says_so(tmp_path: Path) -> None:
    from waypost.server.runtime import PolicyRuntime

    directory = repo(tmp_path, search=team_docs("search", "9", "api.example.com", "/search"))
    runtime = PolicyRuntime(directory, [])
    assert await runtime.reload()
    assert runtime.current is not None
    assert set(runtime.current.routes) == {"payments~orders"}
    assert runtime.lanes.status(runtime.current.teams)["search"]["state"] == "not serving"
    runtime.lanes.close()


# --- views by team --------------------------------------------------------------------------------

GOLDEN_TEAMS = Path(__file__).parent / "golden" / "teams" / "in"


def test_diff_groups_changes_by_team(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from support.gitrepo import GitRepo
    from waypost.cli import main

    git = GitRepo.init(tmp_path / "repo")
    git.copy_tree(GOLDEN_TEAMS, "policies")
    before = git.commit_all("teams")
    search = git.path / "policies" / "teams" / "search" / "orders.yaml"
    search.write_text(
        search.read_text().replace("10.2.0.5", "10.2.0.6").replace("/search/orders", "/search/o")
    )
    after = git.commit_all("search moves")
    assert main(["diff", before, after, str(git.path / "policies")]) == 0
    out = capsys.readouterr().out
    assert "changes by team:\n  search: endpoints/search~orders, routes/edge\n" in out, out


def test_codeowners_from_the_team_documents(tmp_path: Path) -> None:
    from support.gitrepo import GitRepo

    git = GitRepo.init(tmp_path / "repo")
    git.copy_tree(GOLDEN_TEAMS, "policies")
    result = subprocess.run(
        [sys.executable, "-m", "waypost", "teams", "codeowners", "--platform", "@acme/platform"],
        cwd=git.path / "policies",
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines()[1:] == [
        "* @acme/platform",
        "# team payments",
        "/policies/teams/payments/ @acme/payments",
        "# team search",
        "/policies/teams/search/ @acme/search search-lead@example.com",
    ]


def test_a_teams_consumers_call_only_its_routes(tmp_path: Path) -> None:
    import asyncio
    import inspect

    from waypost.filters.authz.core import AuthRequest, AuthzCore, hash_api_key

    consumer = "---\nkind: Consumer\nname: shop\napi_keys: ['{}']\n"
    payments = team_docs("payments", "1", "api.example.com", "/payments") + consumer.format(
        hash_api_key("pay-key")
    )
    platform = PLATFORM + consumer.format(hash_api_key("platform-key")).replace("name: shop", "name: partner")
    core = AuthzCore()
    core.apply(load_policies(write(repo(tmp_path, payments=payments), {"platform.yaml": platform})))

    def decide(route: str, key: str) -> tuple[int, str]:
        request = AuthRequest(route=route, policies=(), method="GET", path="/x", headers={"x-api-key": key})
        result = core.decide(request)
        decision = asyncio.run(result) if inspect.isawaitable(result) else result
        return decision.status, decision.reason

    assert decide("payments~orders", "pay-key") == (200, "allowed")
    assert decide("search~orders", "pay-key") == (
        403,
        "consumer of team payments: not a caller of this route",
    )
    assert decide("search~orders", "platform-key") == (200, "allowed")


def test_a_narrower_host_of_another_team_is_refused_whatever_the_prefixes(tmp_path: Path) -> None:
    # search's api.example.com would be the virtual host Envoy picks for that host, hiding the
    # wildcard's routes there although their prefixes differ.
    platform = PLATFORM.replace("host: pay.example.com}", "host: '*.example.com', path_prefix: /pay}")
    found = errors(write(repo(tmp_path), {"platform.yaml": platform}))
    assert any(
        "host 'api.example.com' path '/search' overlaps team payments's '*.example.com' path '/pay'" in line
        for line in found
    ), found
