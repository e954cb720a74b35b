"""The clusters of the decision services (ext_authz gRPC and HTTP, rate limits), over CDS/EDS.

A Route needs a decision service when Envoy must call one for it: an AuthPolicy Envoy cannot
enforce alone (gRPC Check, or the HTTP endpoint on ``auth_service: http`` gateways) or a global
rate limit. :func:`decision_needs` says which cluster each route needs, from the same bound
features that emit the filters, so the two cannot disagree. A node group gets a decision cluster
only when one of its gateways has such a route.

Where the services are is not policy: `waypost serve` knows (its own ports, at its advertised
address, or the ``--authz-address`` / ``--ratelimit-address`` a fleet names) and passes
:class:`DecisionEndpoints` to the compiler. A needed cluster with no endpoint is still sent
(empty), since the filters name it and Envoy refuses a listener naming an unknown cluster; serve
reports such a route as unserved before any request reaches it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from waypost.contract import (
    AUTHZ_CLUSTER,
    AUTHZ_GRPC_SERVICE,
    AUTHZ_HTTP_HEALTH_PATH,
    RATELIMIT_CLUSTER,
    RATELIMIT_GRPC_SERVICE,
)
from waypost.policies.endpoint_patch import only_services_differ
from waypost.policies.model import PolicySet
from waypost.policies.types import Endpoint
from waypost.xds.compiler.body_checks import BodyCheckFeature
from waypost.xds.compiler.clusters import load_assignment
from waypost.xds.compiler.ext_authz import ExtAuthzFeature
from waypost.xds.compiler.pb import ads_source, pack
from waypost.xds.compiler.ratelimit import GlobalRateLimitFeature

__all__ = ["DecisionEndpoints", "build_decision_cluster", "decision_needs"]

_GRPC_SERVICE = {AUTHZ_CLUSTER: AUTHZ_GRPC_SERVICE, RATELIMIT_CLUSTER: RATELIMIT_GRPC_SERVICE}
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


@dataclass(frozen=True)
class DecisionEndpoints:
    """Where each decision cluster's endpoints are (cluster name -> endpoints).

    ``health_checked``: clusters whose endpoints Envoy actively checks (gRPC health checks for
    the gRPC services, ``GET /healthz`` for the HTTP endpoint): those a fleet names, which may be
    several processes or hosts; a serve's own in-process services are up exactly when it is.
    """

    endpoints: Mapping[str, tuple[Endpoint, ...]] = field(default_factory=dict)
    health_checked: frozenset[str] = frozenset()


def decision_needs(policy: PolicySet) -> dict[str, frozenset[str]]:
    """Route name -> the decision clusters Envoy calls for it (routes needing none left out).

    Computed once per version: `waypost serve` asks before compiling (to start the services the
    version needs), the compiler again (a policy is frozen, so the answer stays true)."""
    last = _last_needs
    # No decision need reads a Service: a version that only swapped some keeps the needs too.
    if last and (last[0] is policy or only_services_differ(last[0], policy)):
        _last_needs[0] = policy
        return cast(dict[str, frozenset[str]], last[1])
    needs = _decision_needs(policy)
    _last_needs[:] = [policy, needs]
    return needs


_last_needs: list[Any] = []
"""[policy, its decision needs] of the last call."""


def _decision_needs(policy: PolicySet) -> dict[str, frozenset[str]]:
    # Only a route with an AuthPolicy, a rate limit or a body check can need a decision service
    # (each feature's cluster_for answers None without them): most routes of a large policy have
    # none, and binding the features walks every route, so they are bound only when some does.
    asking = sorted(
        (name, route)
        for name, route in policy.routes.items()
        # The raw fields (a superset of checks_body): the features below decide exactly.
        if route.auth or route.rate_limit or route.validation is not None or route.screen is not None
    )
    if not asking:
        return {}
    authz = ExtAuthzFeature().bind(policy)
    limits = GlobalRateLimitFeature().bind(policy)
    body_checks = BodyCheckFeature()
    needs: dict[str, frozenset[str]] = {}
    for name, route in asking:
        found = (authz.cluster_for(route), limits.cluster_for(route), body_checks.cluster_for(route))
        clusters = frozenset(c for c in found if c)
        if clusters:
            needs[name] = clusters
    return needs


def build_decision_cluster(
    name: str, endpoints: DecisionEndpoints
) -> tuple[cluster_pb2.Cluster, endpoint_pb2.ClusterLoadAssignment | None]:
    """The cluster ``name`` and, when it is EDS (IP endpoints or none yet), its load assignment."""
    addresses = endpoints.endpoints.get(name, ())
    xds_cluster = cluster_pb2.Cluster(name=name, connect_timeout=duration_pb2.Duration(seconds=1))
    # Nothing serves it (yet): a load assignment without localities, not one empty locality.
    assignment = (
        load_assignment(name, addresses)
        if addresses
        else endpoint_pb2.ClusterLoadAssignment(cluster_name=name)
    )
    if all(a.is_ip for a in addresses):
        xds_cluster.type = cluster_pb2.Cluster.EDS
        xds_cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
    else:
        # A name (a compose service, a Kubernetes Service) is re-resolved by Envoy.
        xds_cluster.type = cluster_pb2.Cluster.STRICT_DNS
        xds_cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        xds_cluster.load_assignment.CopyFrom(assignment)
    grpc_service = _GRPC_SERVICE.get(name)
    if grpc_service is not None:
        # gRPC needs HTTP/2; keepalive PINGs notice a decision service that vanished silently.
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                    connection_keepalive=protocol_pb2.KeepaliveSettings(
                        interval=duration_pb2.Duration(seconds=30), timeout=duration_pb2.Duration(seconds=5)
                    )
                )
            )
        )
        xds_cluster.typed_extension_protocol_options[_HTTP_OPTIONS_KEY].CopyFrom(pack(options))
    if name in endpoints.health_checked:
        xds_cluster.health_checks.append(_health_check(grpc_service))
    return xds_cluster, assignment if xds_cluster.type == cluster_pb2.Cluster.EDS else None


def _health_check(grpc_service: str | None) -> health_check_pb2.HealthCheck:
    check = health_check_pb2.HealthCheck(
        timeout=duration_pb2.Duration(seconds=1),
        interval=duration_pb2.Duration(seconds=5),
        # A new endpoint takes traffic after one good answer; two misses take it out.
        healthy_threshold=wrappers_pb2.UInt32Value(value=1),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=2),
    )
    if grpc_service is not None:
        check.grpc_health_check.service_name = grpc_service
    else:
        check.http_health_check.path = AUTHZ_HTTP_HEALTH_PATH
    return check


def needed_clusters(needs: Mapping[str, frozenset[str]], routes: Iterable[str]) -> frozenset[str]:
    """The decision clusters some of ``routes`` need."""
    return frozenset().union(*(needs.get(route, frozenset()) for route in routes))
