"""The endpoint registry and its overlay on compiled policies, without processes."""

from __future__ import annotations

import asyncio
from pathlib import Path

from waypost.policies.loader import load_policies
from waypost.policies.types import Endpoint
from waypost.xds.compiler import compile_policy
from waypost.xds.compiler.registered import with_registered
from waypost.xds.registry import Claim, EndpointRegistry

POLICY = """\
kind: Service
name: orders
endpoints: ["10.0.0.9:80"]
registration: {nodes: {cluster: orders, labels: {zone: a}}, grace: 50ms}
---
kind: Service
name: fixed
endpoints: ["10.0.0.1:80"]
"""


def _claim(service: str, host: str, *, node: str, cluster: str = "orders", zone: str = "a") -> Claim:
    return Claim(service, Endpoint(host, 80), node, cluster, {"zone": zone})


def _addresses(compiled, cluster: str) -> list[str]:  # type: ignore[no-untyped-def]
    assignment = compiled.load_assignments[cluster]
    return [
        f"{e.endpoint.address.socket_address.address}"
        for group in assignment.endpoints
        for e in group.lb_endpoints
    ]


def test_only_claims_the_policy_allows_become_endpoints(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    compiled = compile_policy(load_policies(tmp_path))
    claims = [
        _claim("orders", "10.0.0.3", node="n3"),
        _claim("orders", "10.0.0.2", node="n2"),
        _claim("orders", "10.6.6.6", node="wrong-zone", zone="b"),
        _claim("orders", "10.6.6.7", node="wrong-cluster", cluster="edge"),
        _claim("fixed", "10.6.6.8", node="no-registration"),
        _claim("ghost", "10.6.6.9", node="no-service"),
    ]
    served = with_registered(compiled, claims)
    # Static endpoints first, then claimed ones in address order: equal sets, equal bytes.
    assert _addresses(served, "orders") == ["10.0.0.9", "10.0.0.2", "10.0.0.3"]
    assert _addresses(served, "fixed") == ["10.0.0.1"]
    assert (
        with_registered(served, reversed(claims)).load_assignments["orders"]
        == served.load_assignments["orders"]
    )
    assert with_registered(compiled, []) is compiled


async def test_a_claim_outlives_its_last_stream_by_the_grace_period() -> None:
    changes = asyncio.Queue[None]()
    registry = EndpointRegistry(grace_for=lambda service: 0.05, on_change=lambda: changes.put_nowait(None))
    claim = _claim("orders", "10.0.0.2", node="n2")
    registry.join(1, claim)
    registry.join(2, claim)  # a second stream of the same node (per-type xDS)
    await asyncio.wait_for(changes.get(), 1)
    assert [c.node_id for c in registry.claims()] == ["n2"]
    registry.leave(1)
    assert registry.claims()[0].expires is None  # stream 2 still up: still live
    registry.leave(2)
    (left,) = registry.claims()
    assert left.expires is not None  # in its grace period
    await asyncio.wait_for(changes.get(), 1)
    await asyncio.wait_for(changes.get(), 1)
    assert registry.claims() == []
