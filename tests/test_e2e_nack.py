"""A resource Envoy rejects, end to end: NACK visible in /status and /metrics, the old config
keeps serving, and the next valid change moves the node forward.

The validator never lets such a resource through, so the test injects one below it: waypost runs
in-process with the compiler patched to break the cluster of a Service named ``poison``
(``connect_timeout`` of -1s, which Envoy's proto constraints reject). Envoy runs delta xDS, so
this is also the delta NACK path against a real Envoy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support import EchoFactory, EnvoyProcess, aget, async_wait_until, free_ports
from waypost.policies.model import PolicySet
from waypost.server import app
from waypost.server.app import ServeOptions, serve
from waypost.xds.compiler import CompiledPolicy, CompileMemo, DecisionEndpoints, compile_policy

pytestmark = pytest.mark.e2e


def poisoned_compile(
    policy: PolicySet, *, decisions: DecisionEndpoints | None = None, memo: CompileMemo | None = None
) -> CompiledPolicy:
    compiled = compile_policy(policy, decisions=decisions, memo=memo)
    for name, cluster in compiled.clusters.items():
        if name == "poison":
            cluster.connect_timeout.seconds = -1
    return compiled


async def test_rejected_resource_is_nacked_visible_and_recovered(
    tmp_path: Path,
    echo_backend: EchoFactory,
    start_envoy: Callable[..., EnvoyProcess],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app, "compile_policy", poisoned_compile)
    echo = await echo_backend("alpha")
    port, xds_port, admin_port = free_ports(3)
    policies = tmp_path / "policies"
    policies.mkdir()
    base = (
        f"kind: Gateway\nname: public\nport: {port}\naddress: 127.0.0.1\n---\n"
        f'kind: Service\nname: alpha\nendpoints: ["{echo.address}"]\n---\n'
        "kind: Route\nname: a\ngateway: public\nmatch: {prefix: /a}\nbackend: alpha\n"
    )
    policy_file = policies / "policy.yaml"
    policy_file.write_text(base)
    stop = asyncio.Event()
    options = ServeOptions(
        policies=policies, host="127.0.0.1", xds_port=xds_port, admin_port=admin_port, debounce=0.05
    )
    server = asyncio.create_task(serve(options, stop=stop))
    admin = f"http://127.0.0.1:{admin_port}"
    try:
        await async_wait_until(lambda: _status_code(f"{admin}/readyz", 200), timeout=10)
        envoy = await asyncio.to_thread(start_envoy, xds_port=xds_port, node_id="edge-1", delta=True)
        await asyncio.to_thread(envoy.wait_for_listener, port)
        assert (await aget(f"http://127.0.0.1:{port}/a")).json()["backend"] == "alpha"
        cds_rejected = envoy.stat("cluster_manager.cds.update_rejected") or 0
        nacks_before = await nack_count(admin)

        policy_file.write_text(
            base
            + f'---\nkind: Service\nname: poison\nendpoints: ["{echo.address}"]\n---\n'
            + "kind: Route\nname: p\ngateway: public\nmatch: {prefix: /p}\nbackend: poison\n"
        )

        async def nacked() -> dict | None:
            status = (await aget(f"{admin}/status")).json()
            (node,) = status["nodes"]
            return node if node["types"]["cds"]["last_nack"] else None

        node = await async_wait_until(nacked, timeout=10)
        assert node["protocol"] == "delta"
        nack = node["types"]["cds"]["last_nack"]
        assert "Expected positive duration" in nack["error"], nack
        assert nack["version"] == node["types"]["cds"]["sent_version"]
        assert node["types"]["cds"]["acked_version"] != nack["version"]
        assert not node["types"]["cds"]["in_sync"]
        assert (envoy.stat("cluster_manager.cds.update_rejected") or 0) > cds_rejected
        # The counter is process-wide and this server is in-process: compare with before.
        assert await nack_count(admin) == nacks_before + 1
        # Routes needing the rejected cluster are held back; the previous config keeps serving.
        await asyncio.sleep(0.5)
        assert (await aget(f"http://127.0.0.1:{port}/p")).status_code == 404
        assert (await aget(f"http://127.0.0.1:{port}/a")).json()["backend"] == "alpha"

        # The next valid change is accepted and the node is in sync again.
        policy_file.write_text(
            base + "---\nkind: Route\nname: f\ngateway: public\nmatch: {prefix: /f}\nbackend: alpha\n"
        )

        async def fresh() -> bool:
            return (await aget(f"http://127.0.0.1:{port}/f")).status_code == 200

        await async_wait_until(fresh, timeout=10)

        async def synced() -> bool:
            (node,) = (await aget(f"{admin}/status")).json()["nodes"]
            return all(t["in_sync"] for t in node["types"].values())

        await async_wait_until(synced, timeout=10)
        clusters = envoy.config_dump(resource="dynamic_active_clusters")["configs"]
        assert {c["cluster"]["name"] for c in clusters} == {"alpha"}
    finally:
        stop.set()
        await server


async def nack_count(admin: str) -> float:
    text = (await aget(f"{admin}/metrics")).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "waypost_xds_nacks_total" and sample.labels.get("type") == "cds":
                return sample.value
    return 0.0


async def _status_code(url: str, expected: int) -> bool:
    return (await aget(url)).status_code == expected
