"""Gateway observability -> the HTTP connection manager: request ids, JSON access log, tracing.

- Every request carries an ``x-request-id`` (Envoy generates one; a client's own is replaced at
  this edge, since ``use_remote_address`` makes the client external) and every response echoes it.
- ``Gateway.access_log: true``: one JSON object per request on Envoy's stdout, with the route,
  upstream, status, duration and the consumer the ext_authz service put in dynamic metadata.
- ``Gateway.tracing``: OpenTelemetry spans exported over OTLP/gRPC to a collector, reached
  through a cluster compiled for that gateway (``<gateway>/otel``).
- Stats are prefixed per Gateway by the connection manager's ``stat_prefix`` (the Gateway name).
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import grpc_service_pb2, substitution_format_string_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import struct_pb2, wrappers_pb2

from waypost.policies.model import Gateway
from waypost.xds.compiler.clusters import grpc_cluster
from waypost.xds.compiler.names import tracing_cluster_name
from waypost.xds.compiler.pb import duration, pack

__all__ = ["ACCESS_LOG_FIELDS", "CONSUMER_METADATA", "patch_hcm_observability", "tracing_clusters"]

CONSUMER_METADATA = ("envoy.filters.http.ext_authz", "consumer")
"""Where the ext_authz service leaves the caller's Consumer name (dynamic metadata namespace, key)."""

ACCESS_LOG_FIELDS: dict[str, str] = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "route": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "authority": "%REQ(:AUTHORITY)%",
    "protocol": "%PROTOCOL%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "details": "%RESPONSE_CODE_DETAILS%",
    "duration_ms": "%DURATION%",
    "upstream_service_time_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "upstream": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_REMOTE_ADDRESS%",
    "bytes_received": "%BYTES_RECEIVED%",
    "bytes_sent": "%BYTES_SENT%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "user_agent": "%REQ(USER-AGENT)%",
    "consumer": f"%DYNAMIC_METADATA({CONSUMER_METADATA[0]}:{CONSUMER_METADATA[1]})%",
}


def _access_log(gateway: Gateway) -> accesslog_pb2.AccessLog:
    fields = {"gateway": gateway.name, **ACCESS_LOG_FIELDS}
    json_format = struct_pb2.Struct()
    json_format.update(fields)
    log_format = substitution_format_string_pb2.SubstitutionFormatString(json_format=json_format)
    return accesslog_pb2.AccessLog(
        name="envoy.access_loggers.stdout",
        typed_config=pack(stream_pb2.StdoutAccessLog(log_format=log_format)),
    )


def _tracing(gateway: Gateway) -> hcm_pb2.HttpConnectionManager.Tracing:
    assert gateway.tracing is not None
    provider = opentelemetry_pb2.OpenTelemetryConfig(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(
                cluster_name=tracing_cluster_name(gateway.name)
            ),
            timeout=duration(1000),
        ),
        service_name=gateway.tracing.service_name or gateway.name,
    )
    return hcm_pb2.HttpConnectionManager.Tracing(
        random_sampling=percent_pb2.Percent(value=gateway.tracing.sampling),
        provider=http_tracer_pb2.Tracing.Http(
            name="envoy.tracers.opentelemetry", typed_config=pack(provider)
        ),
        spawn_upstream_span=wrappers_pb2.BoolValue(value=True),
    )


def patch_hcm_observability(gateway: Gateway, hcm: hcm_pb2.HttpConnectionManager) -> None:
    hcm.always_set_request_id_in_response = True
    if gateway.access_log:
        hcm.access_log.append(_access_log(gateway))
    if gateway.tracing is not None:
        hcm.tracing.CopyFrom(_tracing(gateway))


def tracing_clusters(gateway: Gateway) -> list[cluster_pb2.Cluster]:
    """The OTLP collector's cluster, when the gateway traces: HTTP/2 (gRPC), static or DNS."""
    if gateway.tracing is None:
        return []
    return [grpc_cluster(tracing_cluster_name(gateway.name), gateway.tracing.collector)]
