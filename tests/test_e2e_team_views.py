"""Views by team, over real HTTP: ``waypost serve`` (analytics and the portal on) in a git clone of
a two-team repository, a real Envoy, requests to both teams' routes. The analytics API, the
dashboard's JSON and the portal's catalog each narrow to ``?team=payments`` and answer an unknown
team with a 400 and a JSON body; headless Chromium renders the three pages for payments
(screenshots in test-artifacts/team-*.png).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from support import REPO_ROOT, EchoFactory, EnvoyProcess, WaypostProcess, async_wait_until, free_port
from support.browser import headless
from support.gitrepo import GitRepo

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO_ROOT / "test-artifacts"

GATEWAY = "kind: Gateway\nname: edge\nport: {port}\naddress: 127.0.0.1\n"
GRANT = """\
kind: Team
name: {team}
folders: [teams/{team}]
owners: ["@acme/{team}"]
gateways: [{{gateway: edge, hosts: [{{host: '*', path_prefix: /{team}}}]}}]
upstreams: [127.0.0.0/8]
"""

TEAM = """\
kind: Service
name: app
endpoints: ["{backend}"]
---
kind: Route
name: orders
gateway: edge
match: {{prefix: /{team}/orders}}
backend: app
---
kind: Api
name: catalog
title: {title}
version: "1"
routes: [orders]
"""


def repository(tmp_path: Path, port: int, backend: str) -> GitRepo:
    upstream = GitRepo.init(tmp_path / "upstream.git", bare=True)
    seed = GitRepo.clone(upstream.path, tmp_path / "seed")
    grants = [GRANT.format(team=team) for team in ("payments", "search")]
    seed.write("policies/platform.yaml", "---\n".join([GATEWAY.format(port=port), *grants]))
    for team, title in (("payments", "Payments"), ("search", "Search")):
        seed.write(f"policies/teams/{team}/p.yaml", TEAM.format(team=team, backend=backend, title=title))
    seed.commit_all("two teams")
    seed.git("push", "--quiet", "origin", "HEAD")
    return GitRepo.clone(upstream.path, tmp_path / "served")


async def test_analytics_dashboard_and_portal_narrow_to_a_team(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    backend = await echo_backend("app")
    port, portal_port = free_port(), free_port()
    served = repository(tmp_path, port, backend.address)
    args = ["--analytics-port", str(free_port()), "--data-dir", str(tmp_path / "data")]
    args += ["--portal-port", str(portal_port)]
    waypost = await asyncio.to_thread(start_waypost, served.path / "policies", args=args)
    envoy = await asyncio.to_thread(start_envoy, xds_port=waypost.xds_port, node_id="edge-1")
    await asyncio.to_thread(envoy.wait_for_listener, port)
    admin, portal = waypost.admin_url, f"http://127.0.0.1:{portal_port}"

    async with httpx.AsyncClient(trust_env=False, timeout=10) as client:
        for path in ("/payments/orders", "/payments/orders", "/search/orders"):
            assert (await client.get(f"http://127.0.0.1:{port}{path}")).status_code == 200

        async def payments_counted() -> dict[str, object] | None:
            answer = (await client.get(f"{admin}/analytics.json", params={"team": "payments"})).json()
            return answer if answer["totals"]["requests"] >= 2 else None

        figures = await async_wait_until(payments_counted, timeout=30, message="payments' calls counted")
        assert [r["route"] for r in figures["top_routes"]] == ["payments~orders"]
        assert figures["totals"]["requests"] == 2 and figures["teams"] == ["payments", "search"]
        await async_wait_until(
            lambda: _requests(client, f"{admin}/analytics.json", 3), timeout=30, message="all calls counted"
        )

        dashboard = (await client.get(f"{admin}/dashboard.json", params={"team": "payments"})).json()
        assert dashboard["team"]["routes"] == [{"name": "payments~orders", "gateway": "edge", "hosts": ["*"]}]
        assert dashboard["team"]["apis"] == ["payments~catalog"]
        assert list(dashboard["status"]["policy"]["teams"]) == ["payments"]
        assert [n["id"] for n in dashboard["status"]["nodes"]] == ["edge-1"]

        apis = (await client.get(f"{portal}/api/apis", params={"team": "payments"})).json()
        assert [(a["name"], a["team"], a["routes"]) for a in apis] == [
            ("payments~catalog", "payments", ["payments~orders"])
        ]
        assert len((await client.get(f"{portal}/api/apis")).json()) == 2
        page = await client.get(f"{portal}/", params={"team": "payments"})
        assert "Payments" in page.text and "Search" not in page.text

        for url in (f"{admin}/analytics.json", f"{admin}/dashboard.json", f"{portal}/api/apis", f"{portal}/"):
            refused = await client.get(url, params={"team": "nope"})
            assert refused.status_code == 400, (url, refused.text)
            assert refused.json() == {"error": "unknown team 'nope'; teams: payments, search"}

    ARTIFACTS.mkdir(exist_ok=True)
    views = {
        "dashboard": (f"{admin}/?team=payments", 'data-route="payments~orders"'),
        "analytics": (f"{admin}/analytics?team=payments", 'data-loaded="true"'),
        "portal": (f"{portal}/?team=payments", "APIs of team payments"),
    }
    for name, (url, shown) in views.items():
        dom = await asyncio.to_thread(headless, url, tmp_path / f"chrome-{name}", "--dump-dom")
        assert shown in dom.stdout, (name, dom.stdout[-3000:])
        screenshot = ARTIFACTS / f"team-{name}.png"
        await asyncio.to_thread(headless, url, tmp_path / f"shot-{name}", f"--screenshot={screenshot}")
        assert screenshot.exists() and screenshot.stat().st_size > 10_000


async def _requests(client: httpx.AsyncClient, url: str, at_least: int) -> bool:
    return bool((await client.get(url)).json()["totals"]["requests"] >= at_least)
