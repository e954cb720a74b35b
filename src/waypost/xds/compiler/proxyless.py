"""GrpcTarget -> the resources gRPC's own xDS client reads: no Envoy on the path.

A client dialing ``xds:///<target>`` asks for the Listener named ``<target>``. It gets an
``api_listener`` whose HTTP connection manager names its route configuration over RDS and holds
the router filter only (gRPC NACKs a filter it does not know), then the routes' clusters (EDS
over ADS, cluster names ``<service>/grpc``) and their endpoints in one locality of weight 1 (gRPC
drops localities without a weight, and with them every endpoint).

Only what gRPC implements is compiled (gRFCs A27 xDS, A28 routing, A31 timeouts, A44 retries):
path and header matches, weighted clusters, ``max_stream_duration`` and gRPC retry policies.
:mod:`waypost.policies.validate_grpc` refuses Services gRPC cannot use before we get here.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import string_pb2
from google.protobuf import wrappers_pb2

from waypost.policies.model import GrpcRoute, GrpcTarget, Service
from waypost.xds.compiler.clusters import load_assignment
from waypost.xds.compiler.names import grpc_client_cluster_name, grpc_route_config_name
from waypost.xds.compiler.pb import ads_source, duration, pack

__all__ = [
    "build_grpc_client_cluster",
    "build_grpc_client_load_assignment",
    "build_grpc_listener",
    "build_grpc_route_configuration",
]

_LB_POLICY = {
    "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "least_request": cluster_pb2.Cluster.LEAST_REQUEST,
    "ring_hash": cluster_pb2.Cluster.RING_HASH,
}
# gRPC's retry back-off (A44): the defaults of its service-config retry policy.
_RETRY_BACKOFF = rc_pb2.RetryPolicy.RetryBackOff(base_interval=duration(25), max_interval=duration(250))


def build_grpc_listener(target: GrpcTarget) -> listener_pb2.Listener:
    hcm = hcm_pb2.HttpConnectionManager(
        rds=hcm_pb2.Rds(config_source=ads_source(), route_config_name=grpc_route_config_name(target.name)),
        http_filters=[
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=pack(router_pb2.Router()))
        ],
    )
    return listener_pb2.Listener(
        name=target.target, api_listener=api_listener_pb2.ApiListener(api_listener=pack(hcm))
    )


def build_grpc_route_configuration(target: GrpcTarget) -> route_pb2.RouteConfiguration:
    # One virtual host for every authority: the listener already is this target's alone.
    vhost = rc_pb2.VirtualHost(
        name=target.name, domains=["*"], routes=[_route(route) for route in target.routes]
    )
    return route_pb2.RouteConfiguration(name=grpc_route_config_name(target.name), virtual_hosts=[vhost])


def _route(route: GrpcRoute) -> rc_pb2.Route:
    match = rc_pb2.RouteMatch()
    if route.match.service is None:
        match.prefix = "/"
    elif route.match.method is None:
        match.prefix = f"/{route.match.service}/"
    else:
        match.path = f"/{route.match.service}/{route.match.method}"
    for name, value in sorted(route.match.headers.items()):
        match.headers.append(
            rc_pb2.HeaderMatcher(name=name.lower(), string_match=string_pb2.StringMatcher(exact=value))
        )
    action = rc_pb2.RouteAction()
    backends = route.weighted_backends
    if len(backends) == 1:
        action.cluster = grpc_client_cluster_name(backends[0].service)
    else:
        action.weighted_clusters.CopyFrom(
            rc_pb2.WeightedCluster(
                clusters=[
                    rc_pb2.WeightedCluster.ClusterWeight(
                        name=grpc_client_cluster_name(b.service),
                        weight=wrappers_pb2.UInt32Value(value=b.weight),
                    )
                    for b in backends
                    if b.weight > 0
                ]
            )
        )
    if route.timeout is not None:
        # gRPC reads max_stream_duration (A31); the client's own deadline still applies if shorter.
        action.max_stream_duration.max_stream_duration.CopyFrom(duration(route.timeout))
    if route.retries is not None:
        action.retry_policy.CopyFrom(
            rc_pb2.RetryPolicy(
                retry_on=",".join(route.retries.on),
                num_retries=wrappers_pb2.UInt32Value(value=route.retries.attempts),
                retry_back_off=_RETRY_BACKOFF,
            )
        )
    return rc_pb2.Route(match=match, route=action)


def build_grpc_client_cluster(service: Service) -> cluster_pb2.Cluster:
    cluster = cluster_pb2.Cluster(
        name=grpc_client_cluster_name(service.name),
        type=cluster_pb2.Cluster.EDS,
        lb_policy=_LB_POLICY[service.lb],
    )
    cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
    breaker = service.circuit_breaker
    if breaker is not None and breaker.max_requests is not None:
        # gRPC honours max_requests only (A32): the cap on calls in flight to the cluster.
        cluster.circuit_breakers.CopyFrom(
            circuit_breaker_pb2.CircuitBreakers(
                thresholds=[
                    circuit_breaker_pb2.CircuitBreakers.Thresholds(
                        max_requests=wrappers_pb2.UInt32Value(value=breaker.max_requests)
                    )
                ]
            )
        )
    # Not outlier_detection: gRPC ejects by success rate and failure percentage only (A50) and
    # ignores consecutive_5xx, so sending it would promise what clients do not do (README).
    return cluster


def build_grpc_client_load_assignment(service: Service) -> endpoint_pb2.ClusterLoadAssignment:
    return load_assignment(grpc_client_cluster_name(service.name), service.endpoints, locality_weight=1)
