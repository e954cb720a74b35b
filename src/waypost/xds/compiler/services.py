"""A Service's resources (cluster, upstream TLS secrets, load assignment), and a version that
only moved endpoints, compiled from the one before.

When the loader made the new set from the last one by swapping in Services whose endpoints alone
changed (:mod:`waypost.policies.endpoint_patch`), every other input of the previous compile is
the very same object: its gateways, routes, listeners, decision clusters and every other Service's
resources stand, and only the moved Services' load assignments are built again. Their EDS clusters
stand too (an EDS cluster does not carry its endpoints); a change to or from DNS names, or a
Service with upstream TLS, takes the full (memoized) compile. The result is what a full compile
gives; the memo carries every entry over, so the next compile still finds them.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2

from waypost.policies.endpoint_patch import fields_but_endpoints, only_services_differ
from waypost.policies.model import PolicySet, Service
from waypost.xds.compiler.clusters import build_cluster, build_load_assignment
from waypost.xds.compiler.memo import CompileMemo
from waypost.xds.compiler.upstream_tls import build_service_secrets, patch_cluster_tls

if TYPE_CHECKING:
    from waypost.xds.compiler import CompiledPolicy

__all__ = ["ServiceBlock", "compile_services", "moved_endpoints_only", "same_services", "service_resources"]

ServiceResources = tuple[
    Service,
    cluster_pb2.Cluster,
    tuple[secret_pb2.Secret, ...] | None,
    endpoint_pb2.ClusterLoadAssignment | None,
]


@dataclass(frozen=True)
class ServiceBlock:
    """Every Service's resources in one compile, with the memo entries they came from."""

    services: Mapping[str, Service]
    files: Mapping[str, bytes]
    clusters: dict[str, cluster_pb2.Cluster]
    load_assignments: dict[str, endpoint_pb2.ClusterLoadAssignment]
    cluster_secrets: dict[str, tuple[secret_pb2.Secret, ...]]
    entries: dict[tuple[str, str], Any]


def same_services(memo: CompileMemo, policy: PolicySet) -> bool:
    """Whether the last compile had the very same Service objects, by name, and the same files."""
    block: ServiceBlock | None = memo.previous("services", "")
    if block is None:
        return False
    before, now = block.services, policy.services
    return (
        before is now
        or (
            len(before) == len(now)
            and all(map(operator.is_, before.values(), now.values()))
            and list(before) == list(now)
        )
    ) and block.files == policy.files


def compile_services(policy: PolicySet, memo: CompileMemo) -> ServiceBlock:
    """Every Service's resources: the last compile's whole when its Services are the very same
    objects (a change to routes or gateways only), each from the memo otherwise."""
    if same_services(memo, policy):
        block: ServiceBlock = memo.previous("services", "")
        memo.carry(block.entries)
        memo.carry({("services", ""): ((), policy, block)})
        return block
    clusters: dict[str, cluster_pb2.Cluster] = {}
    load_assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    cluster_secrets: dict[str, tuple[secret_pb2.Secret, ...]] = {}
    files_key = tuple(sorted(policy.files.items())) if policy.files else ()
    for name, service in sorted(policy.services.items()):
        # Upstream TLS reads the files too; without it a Service's id is the whole key.
        service_key: Hashable = id(service) if service.tls is None else (id(service), files_key)
        _, xds_cluster, secrets, assignment = memo.get(
            "service", name, service_key, policy, service_resources, service, policy, memo
        )
        clusters[xds_cluster.name] = xds_cluster
        if secrets is not None:
            cluster_secrets[xds_cluster.name] = secrets
        if assignment is not None:
            load_assignments[xds_cluster.name] = assignment
    block = ServiceBlock(
        policy.services, policy.files, clusters, load_assignments, cluster_secrets, memo.of_kind("service")
    )
    memo.carry({("services", ""): ((), policy, block)})
    return block


def service_resources(service: Service, policy: PolicySet, memo: CompileMemo) -> ServiceResources:
    """A Service's cluster, its upstream TLS secrets and (EDS) its load assignment."""
    before: ServiceResources | None = memo.previous("service", service.name)
    if before is not None and _only_endpoints_moved(before[0], service):
        xds_cluster, secrets = before[1], before[2]
    else:
        xds_cluster, secrets = _service_cluster(service, policy)
    assignment = build_load_assignment(service) if xds_cluster.type == cluster_pb2.Cluster.EDS else None
    return service, xds_cluster, secrets, assignment


def moved_endpoints_only(
    previous: CompiledPolicy, policy: PolicySet, memo: CompileMemo
) -> CompiledPolicy | None:
    """``previous`` with the load assignments of the Services whose endpoints alone moved since,
    when that is all that changed (module docstring); None otherwise."""
    old = previous.policy
    if (
        old.grpc_targets
        or not only_services_differ(old, policy)
        or old.services.keys() != policy.services.keys()
    ):
        return None
    moved: list[ServiceResources] = []
    for name, service in policy.services.items():
        before = old.services[name]
        if before is service:
            continue
        built: ServiceResources | None = memo.previous("service", name)
        if built is None or built[0] is not before or not _only_endpoints_moved(before, service):
            return None
        moved.append((service, built[1], built[2], build_load_assignment(service)))
    memo.carry_over()
    load_assignments = dict(previous.load_assignments)
    for entry in moved:
        service, xds_cluster = entry[0], entry[1]
        memo.put("service", service.name, id(service), policy, entry)
        assert entry[3] is not None
        load_assignments[xds_cluster.name] = entry[3]
    return dataclasses.replace(
        previous, version=policy.version, policy=policy, load_assignments=load_assignments
    )


def _only_endpoints_moved(before: Service, now: Service) -> bool:
    """Whether an EDS cluster built for ``before`` is the one ``now`` needs (it does not carry the
    endpoints; a DNS cluster does, and TLS reads files: those are rebuilt)."""
    return (
        before.tls is None
        and now.tls is None
        and not before.uses_dns
        and not now.uses_dns
        and fields_but_endpoints(before) == fields_but_endpoints(now)
    )


def _service_cluster(
    service: Service, policy: PolicySet
) -> tuple[cluster_pb2.Cluster, tuple[secret_pb2.Secret, ...] | None]:
    xds_cluster = build_cluster(service)
    patch_cluster_tls(service, xds_cluster, policy.files)
    secrets = build_service_secrets(service, policy.files) if service.tls is not None else None
    return xds_cluster, secrets
