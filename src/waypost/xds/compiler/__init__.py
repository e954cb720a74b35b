"""Compile a validated PolicySet into Envoy resources: pure functions, model in, protobuf out.

Each Gateway and each Service compiles exactly once per policy version, or not at all when a
:class:`CompileMemo` has it from the previous version with the same inputs; a node group's
resources are then a selection of those (the Gateways its selector picks, the Services behind
their Routes).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf import message

from waypost.policies.model import Gateway, PolicySet, Route
from waypost.policies.types import Endpoint
from waypost.xds.compiler.analytics import analytics_cluster, gateway_logs, patch_hcm_analytics
from waypost.xds.compiler.decisions import (
    DecisionEndpoints,
    build_decision_cluster,
    decision_needs,
    needed_clusters,
)
from waypost.xds.compiler.features import GATEWAY_CLUSTERS, HTTP_FEATURES, HttpFeature
from waypost.xds.compiler.listeners import build_listener
from waypost.xds.compiler.memo import CompileMemo, context_key, service_view
from waypost.xds.compiler.names import cluster_name, grpc_client_cluster_name, grpc_target_key
from waypost.xds.compiler.proxyless import (
    build_grpc_client_cluster,
    build_grpc_client_load_assignment,
    build_grpc_listener,
    build_grpc_route_configuration,
)
from waypost.xds.compiler.routes import build_route_configuration
from waypost.xds.compiler.secrets import build_secrets
from waypost.xds.compiler.services import compile_services, moved_endpoints_only, same_services
from waypost.xds.types import TypeUrl

__all__ = [
    "CompileMemo",
    "CompiledPolicy",
    "DecisionEndpoints",
    "GatewayResources",
    "NodeResources",
    "compile_policy",
]

NodeResources = dict[TypeUrl, dict[str, message.Message]]
"""Resources by type URL, then by resource name: everything one node group receives."""


@dataclass(frozen=True)
class GatewayResources:
    """What one Gateway contributes to every node it selects."""

    listener: listener_pb2.Listener
    route_config: route_pb2.RouteConfiguration
    secrets: tuple[secret_pb2.Secret, ...]
    clusters: frozenset[str]


@dataclass(frozen=True)
class CompiledPolicy:
    """Every Envoy resource of one policy version, ready to be cut into node groups."""

    version: str
    policy: PolicySet
    gateways: Mapping[str, GatewayResources]
    clusters: Mapping[str, cluster_pb2.Cluster]
    load_assignments: Mapping[str, endpoint_pb2.ClusterLoadAssignment] = field(default_factory=dict)
    cluster_secrets: Mapping[str, tuple[secret_pb2.Secret, ...]] = field(default_factory=dict)
    """SDS secrets a cluster uses (upstream client certificates), by cluster name."""
    decision_needs: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Route name -> the decision-service clusters Envoy calls for it (see :mod:`.decisions`)."""
    decision_endpoints: DecisionEndpoints = field(default_factory=DecisionEndpoints)
    """Where those clusters point in this version."""

    def select_gateways(
        self, node_cluster: str, node_labels: Mapping[str, str], *, proxyless: bool = False
    ) -> tuple[str, ...]:
        """The names of the Gateways a node gets; nodes with the same tuple share one snapshot.

        A proxyless gRPC client (``proxyless``) gets the GrpcTargets that select it instead, under
        :func:`~waypost.xds.compiler.names.grpc_target_key`: never an Envoy's listeners, and an
        Envoy never gets an ``api_listener`` it would refuse."""
        if proxyless:
            return tuple(
                sorted(
                    grpc_target_key(name)
                    for name, target in self.policy.grpc_targets.items()
                    if target.selects(node_cluster, node_labels)
                )
            )
        return tuple(
            sorted(name for name, gw in self.policy.gateways.items() if gw.selects(node_cluster, node_labels))
        )

    def resources_for(
        self, gateway_names: tuple[str, ...], names_cache: dict[tuple[str, ...], Any] | None = None
    ) -> NodeResources:
        """``names_cache`` (kept by the caller across versions) keeps each group's sorted cluster
        names while its gateways' cluster sets are the same objects (the memo reuses them)."""
        selected = [self.gateways[name] for name in gateway_names]
        sets = tuple(gw.clusters for gw in selected)
        cached = names_cache.get(gateway_names) if names_cache is not None else None
        if cached is not None and len(cached[0]) == len(sets) and all(map(operator.is_, cached[0], sets)):
            cluster_names: list[str] = cached[1]
        else:
            cluster_names = sorted(set().union(*sets))
            if names_cache is not None:
                names_cache[gateway_names] = (sets, cluster_names)
        # Built with map/filter/zip rather than comprehensions: tens of thousands of names per
        # group on every version, and these loops run in C.
        assignments = self.load_assignments
        with_endpoints = list(filter(assignments.__contains__, cluster_names))
        with_secrets = filter(self.cluster_secrets.__contains__, cluster_names)
        clusters = map(self.clusters.__getitem__, cluster_names)
        endpoints = map(assignments.__getitem__, with_endpoints)
        return {
            TypeUrl.CLUSTER: dict(zip(cluster_names, clusters, strict=True)),
            TypeUrl.ENDPOINT: dict(zip(with_endpoints, endpoints, strict=True)),
            TypeUrl.SECRET: {
                **{secret.name: secret for gw in selected for secret in gw.secrets},
                **{s.name: s for name in with_secrets for s in self.cluster_secrets[name]},
            },
            TypeUrl.LISTENER: {gw.listener.name: gw.listener for gw in selected},
            TypeUrl.ROUTE: {gw.route_config.name: gw.route_config for gw in selected},
        }


def _http_filters(feature: HttpFeature, gateway: Gateway, routes: list[Route]) -> list[hcm_pb2.HttpFilter]:
    """A feature's filters: one, or several for a feature with ``http_filters`` (one per Service)."""
    several = getattr(feature, "http_filters", None)
    return list(several(gateway, routes)) if several is not None else [feature.http_filter(gateway, routes)]


def compile_policy(
    policy: PolicySet,
    *,
    decisions: DecisionEndpoints | None = None,
    memo: CompileMemo | None = None,
    collector: Endpoint | None = None,
) -> CompiledPolicy:
    """Every resource of ``policy``; ``decisions`` says where the decision services are (none
    known: their clusters go out empty, and `waypost serve` reports the routes that need them).
    With a ``memo`` (kept across versions), resources whose inputs are unchanged are reused from
    the previous compile (see :mod:`.memo`); the result is the same. ``collector``: where Envoys
    reach waypost's analytics collector (``waypost serve --analytics-port``; None compiles no
    access-log stream, see :mod:`.analytics`)."""
    memo = memo or CompileMemo()
    decisions = decisions or DecisionEndpoints()
    memo.begin()
    try:
        last = memo.last
        compiled = None
        if last is not None and last[1:] == (decisions, collector):  # same services' addresses
            compiled = moved_endpoints_only(last[0], policy, memo)
        if compiled is None:
            compiled = _compile(policy, decisions, memo, collector)
        memo.last = (compiled, decisions, collector)
        return compiled
    except BaseException:
        memo.last = None
        raise
    finally:
        memo.end()


def _compile(
    policy: PolicySet, decisions: DecisionEndpoints, memo: CompileMemo, collector: Endpoint | None
) -> CompiledPolicy:
    needs = decision_needs(policy)
    routes_by_gateway: dict[str, list[Route]] = {name: [] for name in policy.gateways}
    for route in policy.routes.values():
        routes_by_gateway[route.gateway].append(route)

    context = memo.intern("context", context_key(policy))
    # The very same Services as the last compile: the same view, not built and compared again.
    services = memo.intern("services", None if same_services(memo, policy) else service_view(policy))
    bound: list[HttpFeature] = []

    def features_bound() -> list[HttpFeature]:
        if not bound:  # bound once per version, and only if some gateway is rebuilt
            bound.extend(f.bind(policy) if hasattr(f, "bind") else f for f in HTTP_FEATURES)
        return bound

    def build_gateway(
        gateway: Gateway, routes: list[Route], decision_clusters: frozenset[str]
    ) -> tuple[GatewayResources, list[cluster_pb2.Cluster]]:
        features = [f for f in features_bound() if f.applies(gateway, routes)]
        own_clusters = [c for build in GATEWAY_CLUSTERS for c in build(gateway)]
        streams_log = collector is not None and gateway_logs(gateway)
        if streams_log:
            assert collector is not None
            own_clusters.append(analytics_cluster(collector))
        resources = GatewayResources(
            listener=build_listener(
                gateway,
                [hf for f in features for hf in _http_filters(f, gateway, routes)],
                extra_hooks=(patch_hcm_analytics,) if streams_log else (),
            ),
            route_config=build_route_configuration(gateway, routes, policy.services, features),
            secrets=build_secrets(gateway, policy.files),
            clusters=frozenset(cluster_name(s) for r in routes for s in r.services)
            | {c.name for c in own_clusters}
            | decision_clusters,
        )
        return resources, own_clusters

    gateways: dict[str, GatewayResources] = {}
    clusters: dict[str, cluster_pb2.Cluster] = {}
    for name, gateway in sorted(policy.gateways.items()):
        routes = sorted(routes_by_gateway[name], key=lambda r: r.name)
        decision_clusters = needed_clusters(needs, (r.name for r in routes))
        # The collector's address shapes the listener and its cluster: part of the key.
        key = (id(gateway), tuple(map(id, routes)), services, context, decision_clusters, collector)
        gateways[name], own_clusters = memo.get(
            "gateway", name, key, policy, build_gateway, gateway, routes, decision_clusters
        )
        clusters.update((c.name, c) for c in own_clusters)
    _compile_grpc_targets(policy, gateways)
    load_assignments: dict[str, endpoint_pb2.ClusterLoadAssignment] = {}
    for name in sorted(needed_clusters(needs, needs)):
        # Kept while its endpoints stay: a cluster object that stays lets snapshots keep CDS whole.
        decision_key = (decisions.endpoints.get(name, ()), name in decisions.health_checked)
        xds_cluster, assignment = memo.get(
            "decision", name, decision_key, None, build_decision_cluster, name, decisions
        )
        clusters[name] = xds_cluster
        if assignment is not None:
            load_assignments[name] = assignment
    block = compile_services(policy, memo)
    clusters.update(block.clusters)
    load_assignments.update(block.load_assignments)
    cluster_secrets = dict(block.cluster_secrets)
    for name in sorted({name for target in policy.grpc_targets.values() for name in target.services}):
        service = policy.services[name]
        grpc_cluster = build_grpc_client_cluster(service)
        clusters[grpc_cluster.name] = grpc_cluster
        load_assignments[grpc_cluster.name] = build_grpc_client_load_assignment(service)
    return CompiledPolicy(
        version=policy.version,
        policy=policy,
        gateways=gateways,
        clusters=clusters,
        load_assignments=load_assignments,
        cluster_secrets=cluster_secrets,
        decision_needs=needs,
        decision_endpoints=decisions,
    )


def _compile_grpc_targets(policy: PolicySet, gateways: dict[str, GatewayResources]) -> None:
    """Each GrpcTarget as the listener group a proxyless client selects (see ``select_gateways``)."""
    for name, target in sorted(policy.grpc_targets.items()):
        gateways[grpc_target_key(name)] = GatewayResources(
            listener=build_grpc_listener(target),
            route_config=build_grpc_route_configuration(target),
            secrets=(),
            clusters=frozenset(grpc_client_cluster_name(s) for s in target.services),
        )
