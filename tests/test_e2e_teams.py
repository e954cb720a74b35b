"""Teams through a real Envoy: one team's refused change holds only that team back.

Two teams share a Gateway (payments under /payments, search under /search). A commit breaks
payments (a host it was not granted) while both add a route: search's new route is served, the
broken payments keeps serving its last good routes (its new one is not), /status says payments is
held and why; fixing payments moves it forward. Then: the same across a restart of serve with
--state-dir in a dirty git checkout, and a JWT subject naming a team's Consumer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from support import EchoFactory, EnvoyProcess, aget, async_wait_until, free_ports
from waypost.server.app import ServeOptions, serve

pytestmark = pytest.mark.e2e


def platform(port: int) -> str:
    team = (
        "kind: Team\nname: {name}\nfolders: [teams/{name}]\n"
        "gateways: [{{gateway: edge, hosts: [{{host: '*', path_prefix: /{name}}}]}}]\n"
        "upstreams: [127.0.0.0/8]\n"
    )
    return (
        f"kind: Gateway\nname: edge\nport: {port}\naddress: 127.0.0.1\n---\n"
        + team.format(name="payments")
        + "---\n"
        + team.format(name="search")
    )


def team(name: str, backend: str, routes: list[str]) -> str:
    # Both teams name their Service `app`: scoped names keep them apart.
    text = f'kind: Service\nname: app\nendpoints: ["{backend}"]\n'
    for route in routes:
        text += (
            f"---\nkind: Route\nname: {route}\ngateway: edge\nhosts: ['*']\n"
            f"match: {{prefix: /{name}/{route}}}\nbackend: app\n"
        )
    return text


async def test_broken_team_keeps_its_last_good_routes_while_the_other_moves_on(
    tmp_path: Path, echo_backend: EchoFactory, start_envoy: Callable[..., EnvoyProcess]
) -> None:
    alpha, beta = await echo_backend("alpha"), await echo_backend("beta")
    port, xds_port, admin_port = free_ports(3)
    policies = tmp_path / "policies"
    (policies / "teams" / "payments").mkdir(parents=True)
    (policies / "teams" / "search").mkdir(parents=True)
    (policies / "platform.yaml").write_text(platform(port))
    payments, search = policies / "teams" / "payments" / "p.yaml", policies / "teams" / "search" / "s.yaml"
    payments.write_text(team("payments", alpha.address, ["old"]))
    search.write_text(team("search", beta.address, ["old"]))
    stop = asyncio.Event()
    options = ServeOptions(
        policies=policies, host="127.0.0.1", xds_port=xds_port, admin_port=admin_port, debounce=0.05
    )
    server = asyncio.create_task(serve(options, stop=stop))
    admin = f"http://127.0.0.1:{admin_port}"
    base = f"http://127.0.0.1:{port}"

    async def backend(path: str) -> str | int:
        response = await aget(base + path)
        return response.json()["backend"] if response.status_code == 200 else response.status_code

    try:
        await async_wait_until(lambda: _ready(admin), timeout=10)
        envoy = await asyncio.to_thread(start_envoy, xds_port=xds_port, node_id="edge-1")
        await asyncio.to_thread(envoy.wait_for_listener, port)
        assert await backend("/payments/old") == "alpha"
        assert await backend("/search/old") == "beta"

        # payments breaks (a Service outside its upstreams) while adding a route; search adds one.
        payments.write_text(team("payments", "10.9.9.9:80", ["old", "new"]))
        search.write_text(team("search", beta.address, ["old", "new"]))

        async def search_moved() -> bool:
            return await backend("/search/new") == "beta"

        await async_wait_until(search_moved, timeout=10)
        assert await backend("/payments/old") == "alpha"  # the last good payments keeps serving
        assert await backend("/payments/new") == 404
        policy = (await aget(f"{admin}/status")).json()["policy"]
        held = policy["teams"]["payments"]
        assert held["state"] == "held"
        assert any(
            "p.yaml:3: Service app: endpoints[0]: team payments: '10.9.9.9' is outside the team's"
            " upstreams (grant lacking: upstreams)" in e
            for e in held["errors"]
        ), held
        assert policy["teams"]["search"]["state"] == "serving"
        assert policy["last_error"] is None  # the platform's version applied

        payments.write_text(team("payments", alpha.address, ["old", "new"]))

        async def payments_moved() -> bool:
            return await backend("/payments/new") == "alpha"

        await async_wait_until(payments_moved, timeout=10)
        teams = (await aget(f"{admin}/status")).json()["policy"]["teams"]
        assert {name: t["state"] for name, t in teams.items()} == {"payments": "serving", "search": "serving"}
    finally:
        stop.set()
        await server


async def _ready(admin: str) -> bool:
    try:
        return (await aget(f"{admin}/readyz")).status_code == 200
    except Exception:
        return False


async def test_a_restart_while_a_team_is_broken_serves_its_last_good_from_the_state_dir(
    tmp_path: Path, echo_backend: EchoFactory, start_envoy: Callable[..., EnvoyProcess]
) -> None:
    """serve --state-dir in a dirty git checkout: the restarted serve holds the broken team at the
    last good it kept before the restart, the other team moves on from the commit's files."""
    from support.gitrepo import GitRepo

    alpha, beta = await echo_backend("alpha"), await echo_backend("beta")
    port, xds_port, admin_port = free_ports(3)
    git = GitRepo.init(tmp_path / "repo")
    git.write("policies/platform.yaml", platform(port))
    git.write("policies/teams/payments/p.yaml", team("payments", alpha.address, ["old"]))
    git.write("policies/teams/search/s.yaml", team("search", beta.address, ["old"]))
    git.commit_all("teams")
    options = ServeOptions(
        policies=git.path / "policies",
        host="127.0.0.1",
        xds_port=xds_port,
        admin_port=admin_port,
        debounce=0.05,
        state_dir=tmp_path / "state",
    )
    admin, base = f"http://127.0.0.1:{admin_port}", f"http://127.0.0.1:{port}"

    async def backend(path: str) -> str | int:
        response = await aget(base + path)
        return response.json()["backend"] if response.status_code == 200 else response.status_code

    stop = asyncio.Event()
    server = asyncio.create_task(serve(options, stop=stop))
    try:
        await async_wait_until(lambda: _ready(admin), timeout=10)
        envoy = await asyncio.to_thread(start_envoy, xds_port=xds_port, node_id="edge-1")
        await asyncio.to_thread(envoy.wait_for_listener, port)
        assert await backend("/payments/old") == "alpha"
    finally:
        stop.set()
        await server

    # While waypost is down: payments breaks, search adds a route (committed), and the checkout
    # gets uncommitted edits (search's file garbled): the commit is what serves.
    git.write("policies/teams/payments/p.yaml", team("payments", "10.9.9.9:80", ["old", "new"]))
    git.write("policies/teams/search/s.yaml", team("search", beta.address, ["old", "new"]))
    git.commit_all("payments breaks, search moves")
    git.write("policies/teams/search/s.yaml", "kind: [")

    stop = asyncio.Event()
    server = asyncio.create_task(serve(options, stop=stop))
    try:
        await async_wait_until(lambda: _ready(admin), timeout=10)

        async def search_moved() -> bool:
            return await backend("/search/new") == "beta"

        await async_wait_until(search_moved, timeout=30)  # Envoy reconnected to the new serve
        assert await backend("/payments/old") == "alpha"  # the last good kept across the restart
        assert await backend("/payments/new") == 404
        policy = (await aget(f"{admin}/status")).json()["policy"]
        assert policy["teams"]["payments"]["state"] == "held"
        assert policy["teams_last_good"]["state_dir"] == str(tmp_path / "state" / "teams")
        assert policy["git"]["dirty"] is True
    finally:
        stop.set()
        await server


async def test_a_jwt_subject_names_the_teams_consumer_through_envoy(
    tmp_path: Path, echo_backend: EchoFactory, start_envoy: Callable[..., EnvoyProcess]
) -> None:
    """Both teams have a Consumer `shop`; only payments' has the role its AuthPolicy asks for. A
    token for `shop` passes on payments' route as payments~shop, and is refused on search's."""
    from authz_support import ISSUER, Signer

    backend = await echo_backend("app")
    signer = Signer.new()
    port, xds_port, admin_port = free_ports(3)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "platform.yaml").write_text(platform(port))
    for name, role in (("payments", "ops"), ("search", "viewer")):
        folder = policies / "teams" / name
        folder.mkdir(parents=True)
        (folder / "jwks.json").write_text(signer.jwks())
        (folder / "p.yaml").write_text(
            team(name, backend.address, ["orders"]).replace("backend: app", "backend: app\nauth: tokens")
            + f"---\nkind: AuthPolicy\nname: tokens\nidentity: [{{jwt: {{issuer: '{ISSUER}',"
            f" jwks: teams/{name}/jwks.json, audiences: [orders]}}}}]\nrules: [{{allow: {{roles: [ops]}}}}]\n"
            f"---\nkind: Consumer\nname: shop\nroles: [{role}]\n"
        )
    stop = asyncio.Event()
    options = ServeOptions(
        policies=policies, host="127.0.0.1", xds_port=xds_port, admin_port=admin_port, debounce=0.05
    )
    server = asyncio.create_task(serve(options, stop=stop))
    try:
        await async_wait_until(lambda: _ready(f"http://127.0.0.1:{admin_port}"), timeout=10)
        envoy = await asyncio.to_thread(start_envoy, xds_port=xds_port, node_id="edge-1")
        await asyncio.to_thread(envoy.wait_for_listener, port)
        bearer = {"authorization": "Bearer " + signer.token(sub="shop")}
        allowed = await aget(f"http://127.0.0.1:{port}/payments/orders", headers=bearer)
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["headers"]["x-waypost-consumer"] == "payments~shop"
        refused = await aget(f"http://127.0.0.1:{port}/search/orders", headers=bearer)
        assert refused.status_code == 403 and refused.json()["reason"] == "no rule allows this request"
    finally:
        stop.set()
        await server
