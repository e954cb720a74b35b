"""The isolation property: no accepted configuration lets one team's Route match a request on
another team's host and path (a request under one of that team's host grants)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from waypost.policies import PolicyError, load_policies
from waypost.policies.model import HostGrant, PolicySet, Route
from waypost.policies.teams import team_of_name

HOSTS = ["a.example.com", "b.example.com", "*.example.com", "x.a.example.com", "*.a.example.com", "*"]
PREFIXES = ["/", "/a", "/ab", "/a/x", "/b", "/t0", "/t1", "/t1/a", "/t2"]
REQUEST_HOSTS = ["a.example.com", "b.example.com", "x.a.example.com", "y.x.a.example.com", "other.org"]
REQUEST_PATHS = sorted({p + s for p in PREFIXES for s in ("", "/", "x", "/x", "b")})

match = st.one_of(
    st.tuples(st.just("prefix"), st.sampled_from([*PREFIXES, "/a/", "/abc"])),
    st.tuples(st.just("path"), st.sampled_from(REQUEST_PATHS)),
    st.tuples(st.just("regex"), st.sampled_from(["/a.*", "/.*", "/b[a-z]*"])),
)
random_route = st.tuples(st.lists(st.sampled_from(HOSTS), min_size=1, max_size=2, unique=True), match)


@st.composite
def teams(draw: st.DrawFn) -> list[tuple[list[tuple[str, str]], list[tuple[list[str], tuple[str, str]]]]]:
    """Teams' grants and Routes. Each team's grants mostly use a prefix of its own (``/t1``) and
    most Routes aim inside a grant, so a fair share of configurations is accepted; the rest (any
    prefix, random Routes) try overlaps and oversteps."""
    found = []
    for t in range(draw(st.integers(2, 3))):
        own = st.sampled_from([f"/t{t}", f"/t{t}/a"])
        grant = st.tuples(st.sampled_from(HOSTS), own | own | st.sampled_from(PREFIXES))
        grants = draw(st.lists(grant, min_size=1, max_size=2))
        routes = []
        for _ in range(draw(st.integers(1, 3))):
            if draw(st.integers(0, 5)) == 5:
                routes.append(draw(random_route))
                continue
            host, prefix = draw(st.sampled_from(grants))
            covered = [
                h for h in HOSTS if h == host or host == "*" or (host[0] == "*" and h.endswith(host[1:]))
            ]
            kind = draw(st.sampled_from(["prefix", "path"]))
            routes.append(
                ([draw(st.sampled_from(covered))], (kind, prefix + draw(st.sampled_from(["", "x", "/x"]))))
            )
        found.append((grants, routes))
    return found


def render(
    teams: list[tuple[list[tuple[str, str]], list[tuple[list[str], tuple[str, str]]]]],
) -> dict[str, str]:
    platform = "kind: Gateway\nname: edge\nport: 8080\n"
    files: dict[str, str] = {}
    for t, (grants, routes) in enumerate(teams):
        hosts = ", ".join(f"{{host: '{h}', path_prefix: '{p}'}}" for h, p in grants)
        platform += (
            f"---\nkind: Team\nname: t{t}\nfolders: [teams/t{t}]\n"
            f"gateways: [{{gateway: edge, hosts: [{hosts}]}}]\nupstreams: [10.0.0.0/8]\n"
        )
        text = "kind: Service\nname: app\nendpoints: ['10.0.0.1:80']\n"
        for r, (route_hosts, (kind, value)) in enumerate(routes):
            listed = ", ".join(f"'{h}'" for h in route_hosts)
            text += (
                f"---\nkind: Route\nname: r{r}\ngateway: edge\nhosts: [{listed}]\n"
                f"match: {{{kind}: '{value}'}}\nbackend: app\n"
            )
        files[f"teams/t{t}/policy.yaml"] = text
    files["platform.yaml"] = platform
    return files


def host_matches(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return pattern == host


def route_matches(route: Route, host: str, path: str) -> bool:
    if not any(host_matches(h, host) for h in route.hosts):
        return False
    m = route.match
    if m.prefix is not None:
        return path.startswith(m.prefix)
    if m.path is not None:
        return path == m.path
    return m.regex is not None and re.fullmatch(m.regex, path) is not None


def under_grant(grant: HostGrant, host: str, path: str) -> bool:
    return host_matches(grant.host, host) and path.startswith(grant.path_prefix)


def load(files: dict[str, str]) -> PolicySet | None:
    with tempfile.TemporaryDirectory() as directory:
        for relative, text in files.items():
            path = Path(directory) / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        try:
            return load_policies(directory)
        except PolicyError:
            return None


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(teams())
def test_no_accepted_route_reaches_another_teams_host_and_path(teams: list) -> None:  # type: ignore[type-arg]
    policy = load(render(teams))
    event("accepted" if policy is not None else "refused")
    if policy is None:
        return
    for name, route in policy.routes.items():
        owner = team_of_name(name)
        for other, grants in policy.teams.items():
            if other == owner:
                continue
            for host_grant in (h for g in grants.gateways for h in g.hosts):
                for host in REQUEST_HOSTS:
                    for path in REQUEST_PATHS:
                        assert not (
                            route_matches(route, host, path) and under_grant(host_grant, host, path)
                        ), f"Route {name} matches {host}{path}, under team {other}'s grant {host_grant}"


def test_some_generated_configurations_are_accepted() -> None:
    """The property is not vacuous: disjoint grants with routes inside them load."""
    files = render(
        [
            ([("a.example.com", "/a")], [(["a.example.com"], ("prefix", "/a/x"))]),
            ([("a.example.com", "/b")], [(["a.example.com"], ("path", "/bx"))]),
        ]
    )
    assert load(files) is not None
