"""Gateway.analytics -> Envoy's gRPC access logger streaming to waypost's collector, and the
collector's cluster, delivered over CDS.

Each Gateway with ``analytics.enabled`` (the default) gets an ``envoy.access_loggers.http_grpc``
access log on its connection manager, named after the Gateway (``log_name``: the collector reads
the Gateway from it), sending to the cluster :data:`ANALYTICS_CLUSTER`. That cluster reaches the
collector of ``waypost serve --analytics-port`` at the address it advertises; it is compiled here,
beside the Gateway's own resources, so Envoys need nothing in their bootstrap for it. Without a
collector (``compile_policy(..., collector=None)``: ``waypost render``, or serve without
``--analytics-port``) nothing is compiled.

Envoy never waits on the collector: the logger buffers up to :data:`BUFFER_BYTES` or one second,
then writes to its stream. While that stream is above the connection's buffer limit
(:data:`CONNECTION_BUFFER_BYTES`) entries are dropped and counted in
``access_logs.grpc_access_log.logs_dropped``; while the collector is unreachable they are lost
with the failing stream (``logs_written`` minus what waypost received, see docs/analytics.md).
Requests are never held.

``analytics.sample`` below 100 adds a runtime filter sampling that share of requests, and a custom
tag (``waypost.sample``) so the collector counts each logged request as 100/sample.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2, grpc_service_pb2
from envoy.extensions.access_loggers.grpc.v3 import als_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.tracing.v3 import custom_tag_pb2
from google.protobuf import wrappers_pb2

from waypost.contract import ANALYTICS_CLUSTER, ANALYTICS_SAMPLE_TAG
from waypost.policies.model import Gateway
from waypost.policies.types import Endpoint
from waypost.xds.compiler.clusters import grpc_cluster
from waypost.xds.compiler.pb import duration, pack, percent

__all__ = [
    "ANALYTICS_CLUSTER",
    "BUFFER_BYTES",
    "CONNECTION_BUFFER_BYTES",
    "analytics_cluster",
    "gateway_logs",
    "patch_hcm_analytics",
]

BUFFER_BYTES = 16 * 1024
FLUSH_MS = 1000
CONNECTION_BUFFER_BYTES = 1024 * 1024
"""Per-connection write buffer to the collector: above it the logger's stream reports
backpressure and Envoy drops entries rather than buffering more."""


def _logging(gateway: Gateway) -> bool:
    return gateway.analytics.enabled


def patch_hcm_analytics(gateway: Gateway, hcm: hcm_pb2.HttpConnectionManager) -> None:
    if not _logging(gateway):
        return
    sample = gateway.analytics.sample
    common = als_pb2.CommonGrpcAccessLogConfig(
        log_name=gateway.name,
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=ANALYTICS_CLUSTER)
        ),
        transport_api_version=config_source_pb2.ApiVersion.V3,
        buffer_flush_interval=duration(FLUSH_MS),
        buffer_size_bytes=wrappers_pb2.UInt32Value(value=BUFFER_BYTES),
    )
    log = accesslog_pb2.AccessLog(name="envoy.access_loggers.http_grpc")
    if sample < 100:
        common.custom_tags.append(
            custom_tag_pb2.CustomTag(
                tag=ANALYTICS_SAMPLE_TAG, literal=custom_tag_pb2.CustomTag.Literal(value=f"{sample:g}")
            )
        )
        log.filter.runtime_filter.CopyFrom(
            accesslog_pb2.RuntimeFilter(
                runtime_key=f"waypost.analytics.{gateway.name}.sample",
                percent_sampled=percent(sample),
                use_independent_randomness=True,
            )
        )
    log.typed_config.CopyFrom(pack(als_pb2.HttpGrpcAccessLogConfig(common_config=common)))
    hcm.access_log.append(log)


def analytics_cluster(collector: Endpoint) -> cluster_pb2.Cluster:
    cluster = grpc_cluster(ANALYTICS_CLUSTER, collector)
    cluster.per_connection_buffer_limit_bytes.value = CONNECTION_BUFFER_BYTES
    return cluster


def gateway_logs(gateway: Gateway) -> bool:
    """Whether this Gateway streams its log (and so needs :data:`ANALYTICS_CLUSTER`)."""
    return _logging(gateway)
