"""Registered endpoints into a compiled version: the EDS a node group gets, claims included.

Pure: a compiled policy and the claims in force in, a compiled policy out whose load assignments
of Services with ``registration`` hold their static endpoints plus every claimed one the policy
allows (the claiming node matches ``registration.nodes``), in a stable order so equal sets give
equal bytes on every replica. Everything else is shared with the input, unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from waypost.policies.model import Service
from waypost.xds.compiler import CompiledPolicy
from waypost.xds.compiler.clusters import load_assignment
from waypost.xds.compiler.names import cluster_name, grpc_client_cluster_name
from waypost.xds.registry import Claim

__all__ = ["allowed", "registrable_clusters", "with_registered"]


def allowed(services: Mapping[str, Service], claim: Claim) -> bool:
    """Whether the policy lets ``claim``'s node be an endpoint of some Service."""
    return any(_takes(name, service, claim) for name, service in services.items())


def _takes(name: str, service: Service, claim: Claim) -> bool:
    registration = service.registration
    return (
        registration is not None
        and registration.key(name) == claim.service
        and registration.nodes.matches(claim.node_cluster, claim.node_labels)
    )


def registrable_clusters(compiled: CompiledPolicy) -> set[str]:
    """The clusters whose endpoints claims can change: what an endpoint change re-encodes."""
    names = set()
    for name, service in compiled.policy.services.items():
        if service.registration is not None:
            names |= {cluster_name(name), grpc_client_cluster_name(name)}
    return names & set(compiled.load_assignments)


def with_registered(compiled: CompiledPolicy, claims: Iterable[Claim]) -> CompiledPolicy:
    services = compiled.policy.services
    claims = list(claims)
    load_assignments = dict(compiled.load_assignments)
    changed = False
    for name, service in services.items():
        if service.registration is None:
            continue
        claimed = {claim.endpoint for claim in claims if _takes(name, service, claim)}
        extra = sorted(claimed - set(service.endpoints), key=lambda e: (e.host, e.port))
        if not extra:
            continue
        endpoints = (*service.endpoints, *extra)
        for cluster, weight in ((cluster_name(name), None), (grpc_client_cluster_name(name), 1)):
            if cluster in load_assignments:
                load_assignments[cluster] = load_assignment(cluster, endpoints, locality_weight=weight)
                changed = True
    return dataclasses.replace(compiled, load_assignments=load_assignments) if changed else compiled
