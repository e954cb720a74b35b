"""A fleet of two node groups on one waypost, with real Envoys: a state-of-the-world Envoy in
``node.cluster`` edge and a delta Envoy in ``node.cluster`` internal.

One stack, several phases (each is a few seconds of real Envoy work, so they share it):
targeting, identical routing over both protocols, /status, no cross-group pushes, removals
reaching Envoy, and a waypost restart that Envoy rides out without any config change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from support import EchoFactory, EchoServer, EnvoyProcess, WaypostProcess, aget, async_wait_until, free_ports

pytestmark = pytest.mark.e2e

GROUPS = {"public": "edge", "private": "internal"}


def fleet_policy(
    ports: dict[str, int],
    alpha: EchoServer,
    beta: EchoServer,
    gamma: EchoServer | None,
    *,
    extra_private: str = "",
) -> str:
    docs = [
        f'kind: Service\nname: alpha\nendpoints: ["{alpha.address}"]',
        f'kind: Service\nname: beta\nendpoints: ["{beta.address}"]',
    ]
    if gamma is not None:
        docs.append(f'kind: Service\nname: gamma\nendpoints: ["{gamma.address}"]')
    for gateway, cluster in GROUPS.items():
        docs.append(
            f"kind: Gateway\nname: {gateway}\nport: {ports[gateway]}\naddress: 127.0.0.1\n"
            f"nodes: {{cluster: {cluster}}}"
        )
        routes = [("a", "alpha"), ("b", "beta")] + ([("g", "gamma")] if gamma is not None else [])
        for prefix, backend in routes:
            docs.append(
                f"kind: Route\nname: {gateway}-{prefix}\ngateway: {gateway}\n"
                f"match: {{prefix: /{prefix}}}\nbackend: {backend}"
            )
    if extra_private:
        docs.append(extra_private)
    return "\n---\n".join(docs) + "\n"


def pushes(waypost: WaypostProcess, group: str) -> float:
    return sum(
        waypost.metric("waypost_xds_pushes_total", type=t, group=group) or 0
        for t in ("cds", "eds", "lds", "rds")
    )


async def answer(port: int, path: str) -> tuple[int, str | None]:
    response = await aget(f"http://127.0.0.1:{port}{path}")
    backend = response.json().get("backend") if response.status_code == 200 else None
    return response.status_code, backend


async def test_fleet_targeting_protocols_removal_and_restart(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_waypost: Callable[..., WaypostProcess],
    start_envoy: Callable[..., EnvoyProcess],
) -> None:
    alpha, beta, gamma = await echo_backend("alpha"), await echo_backend("beta"), await echo_backend("gamma")
    ports = dict(zip(GROUPS, free_ports(2), strict=True))
    policies = tmp_path / "policies"
    policies.mkdir()
    policy_file = policies / "fleet.yaml"
    policy_file.write_text(fleet_policy(ports, alpha, beta, gamma))
    waypost = await asyncio.to_thread(start_waypost, policies)
    edge = await asyncio.to_thread(
        start_envoy, xds_port=waypost.xds_port, node_id="edge-1", node_cluster="edge"
    )
    internal = await asyncio.to_thread(
        start_envoy, xds_port=waypost.xds_port, node_id="internal-1", node_cluster="internal", delta=True
    )
    await asyncio.to_thread(edge.wait_for_listener, ports["public"])
    await asyncio.to_thread(internal.wait_for_listener, ports["private"])

    # Targeting: each group gets its own Gateway's listener, and only that one.
    assert edge.listener_ports() == {ports["public"]}
    assert internal.listener_ports() == {ports["private"]}

    # SotW and delta Envoys route alike.
    for path in ("/a/1", "/b/2", "/g/3", "/nothing"):
        assert await answer(ports["public"], path) == await answer(ports["private"], path), path
    assert await answer(ports["public"], "/g/3") == (200, "gamma")

    status = await asyncio.to_thread(waypost.status)
    nodes = {n["id"]: n for n in status["nodes"]}
    assert nodes["edge-1"]["protocol"] == "sotw" and nodes["internal-1"]["protocol"] == "delta"
    assert nodes["edge-1"]["gateways"] == ["public"] and nodes["internal-1"]["gateways"] == ["private"]
    for node in nodes.values():
        assert node["policy_version"] == status["policy"]["version"]
        assert set(node["types"]) == {"cds", "eds", "lds", "rds"}
        assert all(t["in_sync"] and t["last_nack"] is None for t in node["types"].values()), node

    # A change to the private group's routes pushes to that group only.
    before = {group: pushes(waypost, group) for group in GROUPS}
    edge_updates = edge.stats(filter="update_(success|attempt)")
    policy_file.write_text(
        fleet_policy(
            ports,
            alpha,
            beta,
            gamma,
            extra_private=(
                "kind: Route\nname: private-new\ngateway: private\nmatch: {prefix: /new}\nbackend: alpha"
            ),
        )
    )
    await async_wait_until(lambda: _is(answer(ports["private"], "/new/1"), (200, "alpha")), timeout=10)
    assert pushes(waypost, "private") > before["private"]
    assert pushes(waypost, "public") == before["public"]
    assert edge.stats(filter="update_(success|attempt)") == edge_updates
    assert (await answer(ports["public"], "/new/1"))[0] == 404

    # Removing a route and its Service removes both from every Envoy.
    policy_file.write_text(fleet_policy(ports, alpha, beta, None))

    def gamma_gone(envoy: EnvoyProcess) -> bool:
        dump = envoy.config_dump(resource="dynamic_active_clusters")
        clusters = {c["cluster"]["name"] for c in dump.get("configs", [])}
        routes = str(envoy.config_dump(resource="dynamic_route_configs"))
        return "gamma" not in clusters and "alpha" in clusters and "/g" not in routes

    for envoy in (edge, internal):
        await async_wait_until(lambda envoy=envoy: asyncio.to_thread(gamma_gone, envoy), timeout=10)
    for port in ports.values():
        assert (await answer(port, "/g/3"))[0] == 404
        assert await answer(port, "/a/3") == (200, "alpha")

    # waypost goes away: Envoys keep serving. It comes back: they reconnect and change nothing.
    await async_wait_until(lambda: _all_in_sync(waypost), timeout=10)
    updates = {
        e.node_id: e.stats(filter="(cds|lds|rds|eds).*(update_success|update_rejected|version)$")
        for e in (edge, internal)
    }
    for envoy in (edge, internal):
        held = updates[envoy.node_id]
        assert (
            held["cluster_manager.cds.update_success"] > 0 and held["listener_manager.lds.update_success"] > 0
        )
        assert any(".rds." in name for name in held), held
    waypost.stop()
    for port in ports.values():
        assert await answer(port, "/a/4") == (200, "alpha")
    for envoy in (edge, internal):
        await async_wait_until(
            lambda envoy=envoy: envoy.stat("control_plane.connected_state") == 0, timeout=10
        )
    await asyncio.to_thread(waypost.start)
    for envoy in (edge, internal):
        await async_wait_until(
            lambda envoy=envoy: envoy.stat("control_plane.connected_state") == 1, timeout=20
        )
    await async_wait_until(lambda: _all_in_sync(waypost, count=2), timeout=10)
    await asyncio.sleep(0.5)
    for envoy in (edge, internal):
        after = envoy.stats(filter="(cds|lds|rds|eds).*(update_success|update_rejected|version)$")
        assert after == updates[envoy.node_id], envoy.node_id
    for port in ports.values():
        assert await answer(port, "/b/5") == (200, "beta")


async def _is(awaitable: object, expected: object) -> bool:
    return await awaitable == expected  # type: ignore[misc]


async def _all_in_sync(waypost: WaypostProcess, count: int = 2) -> bool:
    status = await asyncio.to_thread(waypost.status)
    nodes = status["nodes"]
    return len(nodes) == count and all(t["in_sync"] for n in nodes for t in n["types"].values())


async def test_envoy_on_the_per_type_services(
    tmp_path: Path, echo_backend: EchoFactory, start_waypost: Callable[..., WaypostProcess], envoy_bin: Path
) -> None:
    """Clusters over the delta ClusterDiscoveryService and listeners over the SotW
    ListenerDiscoveryService, each its own stream; routes and endpoints (which the compiled
    resources source from ADS) over ADS."""
    alpha = await echo_backend("alpha")
    (port,) = free_ports(1)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        f"kind: Gateway\nname: public\nport: {port}\naddress: 127.0.0.1\n---\n"
        f'kind: Service\nname: alpha\nendpoints: ["{alpha.address}"]\n---\n'
        "kind: Route\nname: a\ngateway: public\nmatch: {prefix: /}\nbackend: alpha\n"
    )
    waypost = await asyncio.to_thread(start_waypost, policies)
    envoy = EnvoyProcess(xds_port=waypost.xds_port, workdir=tmp_path, envoy_bin=envoy_bin, node_id="plain-1")
    dynamic = envoy.bootstrap["dynamic_resources"]
    for key, api_type in (("cds_config", "DELTA_GRPC"), ("lds_config", "GRPC")):
        dynamic[key] = {
            "resource_api_version": "V3",
            "api_config_source": {
                "api_type": api_type,
                "transport_api_version": "V3",
                "grpc_services": [{"envoy_grpc": {"cluster_name": "waypost_xds"}}],
            },
        }
    try:
        await asyncio.to_thread(envoy.start)
        await asyncio.to_thread(envoy.wait_for_listener, port)
        assert await answer(port, "/x") == (200, "alpha")
        status = await asyncio.to_thread(waypost.status)
        streams = {(n["service"], n["protocol"]) for n in status["nodes"] if n["id"] == "plain-1"}
        assert streams == {("cds", "delta"), ("lds", "sotw"), ("ads", "sotw")}, status["nodes"]
    finally:
        envoy.stop()
