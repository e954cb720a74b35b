"""Service -> Envoy Cluster and ClusterLoadAssignment."""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import http_pb2
from google.protobuf import wrappers_pb2

from waypost.policies.model import Service
from waypost.policies.types import Endpoint
from waypost.xds.compiler.names import cluster_name
from waypost.xds.compiler.pb import ads_source, duration, pack

__all__ = ["build_cluster", "build_load_assignment", "grpc_cluster", "load_assignment"]

_LB_POLICY = {
    "round_robin": cluster_pb2.Cluster.ROUND_ROBIN,
    "least_request": cluster_pb2.Cluster.LEAST_REQUEST,
    "random": cluster_pb2.Cluster.RANDOM,
    "ring_hash": cluster_pb2.Cluster.RING_HASH,
    "maglev": cluster_pb2.Cluster.MAGLEV,
}
_HTTP_OPTIONS_KEY = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def build_cluster(service: Service) -> cluster_pb2.Cluster:
    """The cluster for a Service: EDS over ADS for IP endpoints, STRICT_DNS for host names."""
    xds_cluster = cluster_pb2.Cluster(
        name=cluster_name(service.name),
        connect_timeout=duration(service.connect_timeout),
        lb_policy=_LB_POLICY[service.lb],
    )
    if service.uses_dns:
        xds_cluster.type = cluster_pb2.Cluster.STRICT_DNS
        # Envoy's default (AUTO) prefers IPv6; most upstream fleets still answer on IPv4 first.
        xds_cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        xds_cluster.load_assignment.CopyFrom(build_load_assignment(service))
    else:
        xds_cluster.type = cluster_pb2.Cluster.EDS
        xds_cluster.eds_cluster_config.eds_config.CopyFrom(ads_source())
    if service.protocol in ("http2", "grpc"):
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        xds_cluster.typed_extension_protocol_options[_HTTP_OPTIONS_KEY].CopyFrom(pack(options))
    if service.health_check is not None:
        xds_cluster.health_checks.append(_health_check(service))
    if service.circuit_breaker is not None:
        xds_cluster.circuit_breakers.CopyFrom(_circuit_breakers(service))
    if service.outlier_detection is not None:
        od = service.outlier_detection
        xds_cluster.outlier_detection.CopyFrom(
            outlier_detection_pb2.OutlierDetection(
                consecutive_5xx=wrappers_pb2.UInt32Value(value=od.consecutive_5xx),
                base_ejection_time=duration(od.base_ejection_time),
                interval=duration(od.interval),
                max_ejection_percent=wrappers_pb2.UInt32Value(value=od.max_ejection_percent),
            )
        )
    return xds_cluster


def grpc_cluster(name: str, endpoint: Endpoint) -> cluster_pb2.Cluster:
    """A cluster to one gRPC endpoint of waypost's or a collector's: HTTP/2, STATIC for an IP
    address, STRICT_DNS (IPv4 first) for a host name."""
    cluster = cluster_pb2.Cluster(
        name=name,
        connect_timeout=duration(1000),
        type=cluster_pb2.Cluster.STATIC if endpoint.is_ip else cluster_pb2.Cluster.STRICT_DNS,
        load_assignment=load_assignment(name, [endpoint]),
    )
    if not endpoint.is_ip:
        cluster.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    cluster.typed_extension_protocol_options[_HTTP_OPTIONS_KEY].CopyFrom(pack(options))
    return cluster


def build_load_assignment(service: Service) -> endpoint_pb2.ClusterLoadAssignment:
    return load_assignment(cluster_name(service.name), service.endpoints)


def load_assignment(
    name: str, endpoints: Iterable[Endpoint], *, locality_weight: int | None = None
) -> endpoint_pb2.ClusterLoadAssignment:
    """One locality holding ``endpoints``: the shape every waypost cluster uses. Envoy ignores a
    locality's weight unless told to; gRPC clients need one, and the locality itself, even empty
    (``locality_weight``)."""
    weight = wrappers_pb2.UInt32Value(value=locality_weight) if locality_weight is not None else None
    locality = base_pb2.Locality() if locality_weight is not None else None
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                load_balancing_weight=weight,
                locality=locality,
                lb_endpoints=[
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(
                                    address=endpoint.host, port_value=endpoint.port
                                )
                            )
                        )
                    )
                    for endpoint in endpoints
                ],
            )
        ],
    )


def _health_check(service: Service) -> health_check_pb2.HealthCheck:
    hc = service.health_check
    assert hc is not None
    xds_check = health_check_pb2.HealthCheck(
        timeout=duration(hc.timeout),
        interval=duration(hc.interval),
        # Envoy checks a cluster that has had no traffic yet only every 60 s by default: the
        # interval users write holds from the start (an endpoint's state is right before use).
        no_traffic_interval=duration(hc.interval),
        healthy_threshold=wrappers_pb2.UInt32Value(value=hc.healthy),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=hc.unhealthy),
    )
    if service.protocol == "grpc":
        # grpc.health.v1.Health/Check over the cluster's HTTP/2: SERVING is healthy.
        xds_check.grpc_health_check.service_name = hc.service or ""
        return xds_check
    assert hc.path is not None  # the model requires it for http1/http2
    xds_check.http_health_check.path = hc.path
    if service.protocol == "http2":
        xds_check.http_health_check.codec_client_type = http_pb2.HTTP2
    return xds_check


def _circuit_breakers(service: Service) -> circuit_breaker_pb2.CircuitBreakers:
    cb = service.circuit_breaker
    assert cb is not None
    thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds()
    for field in ("max_connections", "max_pending_requests", "max_requests", "max_retries"):
        value = getattr(cb, field)
        if value is not None:
            getattr(thresholds, field).value = value
    return circuit_breaker_pb2.CircuitBreakers(thresholds=[thresholds])
