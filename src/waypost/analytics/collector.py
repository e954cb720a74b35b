"""The collector: Envoy's gRPC access-log service (``AccessLogService.StreamAccessLogs``).

Envoy's ``envoy.access_loggers.http_grpc`` logger (compiled per Gateway by
:mod:`waypost.xds.compiler.analytics`) opens one stream per worker thread and sends batches of
``HTTPAccessLogEntry``; the first message of a stream names the Gateway (``log_name``). Each
entry becomes one :meth:`~waypost.analytics.aggregate.Aggregator.record` call, in the handler's
coroutine: no queue, no copy, so the loop reads batches as fast as it aggregates them, and when
it cannot keep up HTTP/2 flow control backs up into Envoy, which drops entries (counted in its
``access_logs.grpc_access_log.logs_dropped``) instead of ever holding a request.

Why http_grpc rather than OpenTelemetry access logs: its entries are typed (status, timings,
bytes, response flags, dynamic metadata are fields, not formatted strings to parse back) and its
protos ship with the xDS protos waypost already uses; see docs/analytics.md.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2
from google.protobuf import duration_pb2

from waypost.analytics.aggregate import Aggregator
from waypost.analytics.metrics import DROPPED, ENTRIES, STREAMS
from waypost.contract import ANALYTICS_SAMPLE_TAG, METADATA_CONSUMER, METADATA_NAMESPACE, METADATA_PLAN
from waypost.log import get_logger

__all__ = ["AUTHZ_NAMESPACE", "SAMPLE_TAG", "Collector", "start_collector"]

log = get_logger("waypost.analytics")

AUTHZ_NAMESPACE = METADATA_NAMESPACE
"""Dynamic metadata namespace where the ext_authz service leaves ``consumer`` and ``plan``."""
SAMPLE_TAG = ANALYTICS_SAMPLE_TAG
"""Custom tag carrying the Gateway's sample percentage: each entry then counts 100/sample."""

_METHODS = {value: name for name, value in base_pb2.RequestMethod.items() if value}
# Envoy's short names (as %RESPONSE_FLAGS% prints them), so the dashboard reads like Envoy's logs.
_FLAGS = {
    "failed_local_healthcheck": "LH",
    "no_healthy_upstream": "UH",
    "upstream_request_timeout": "UT",
    "local_reset": "LR",
    "upstream_remote_reset": "UR",
    "upstream_connection_failure": "UF",
    "upstream_connection_termination": "UC",
    "upstream_overflow": "UO",
    "no_route_found": "NR",
    "delay_injected": "DI",
    "fault_injected": "FI",
    "rate_limited": "RL",
    "unauthorized_details": "UAEX",
    "rate_limit_service_error": "RLSE",
    "downstream_connection_termination": "DC",
    "upstream_retry_limit_exceeded": "URX",
    "stream_idle_timeout": "SI",
    "invalid_envoy_request_headers": "IH",
    "downstream_protocol_error": "DPE",
    "upstream_max_stream_duration_reached": "UMSDR",
    "response_from_cache_filter": "RFCF",
    "no_filter_config_found": "NFCF",
    "duration_timeout": "DT",
    "upstream_protocol_error": "UPE",
    "no_cluster_found": "NC",
    "overload_manager": "OM",
    "dns_resolution_failure": "DF",
    "downstream_remote_reset": "DR",
}


def _ms(d: duration_pb2.Duration) -> float:
    return float(d.seconds * 1000.0 + d.nanos / 1e6)


SERVICE_NAME = "envoy.service.accesslog.v3.AccessLogService"


class Collector:
    def __init__(self, aggregator: Aggregator) -> None:
        self.aggregator = aggregator

    def add_to(self, server: grpc.aio.Server) -> None:
        handler = grpc.stream_unary_rpc_method_handler(
            self.StreamAccessLogs,
            request_deserializer=als_pb2.StreamAccessLogsMessage.FromString,
            response_serializer=als_pb2.StreamAccessLogsResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, {"StreamAccessLogs": handler}),)
        )

    async def StreamAccessLogs(
        self,
        request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage],
        context: grpc.aio.ServicerContext,
    ) -> als_pb2.StreamAccessLogsResponse:
        STREAMS.inc()
        gateway = ""
        entries = ENTRIES.labels("")
        try:
            async for message in request_iterator:
                if message.HasField("identifier"):
                    gateway = message.identifier.log_name
                    entries = ENTRIES.labels(message.identifier.node.id)
                entries.inc(self.ingest(gateway, message.http_logs.log_entry, int(time.time())))
        finally:
            STREAMS.dec()
        return als_pb2.StreamAccessLogsResponse()

    def ingest(self, gateway: str, entries: Iterable[accesslog_pb2.HTTPAccessLogEntry], now: int) -> int:
        """Record a batch; returns how many entries it held."""
        aggregator = self.aggregator
        n = 0
        for entry in entries:
            n += 1
            try:
                _record(aggregator, now, gateway, entry)
            except (ValueError, KeyError, ZeroDivisionError) as exc:
                DROPPED.labels("bad_entry").inc()
                log.warning("analytics entry refused", gateway=gateway, error=str(exc))
        return n


def _record(aggregator: Aggregator, now: int, gateway: str, entry: accesslog_pb2.HTTPAccessLogEntry) -> None:
    common = entry.common_properties
    consumer = plan = ""
    filter_metadata = common.metadata.filter_metadata
    if AUTHZ_NAMESPACE in filter_metadata:
        fields = filter_metadata[AUTHZ_NAMESPACE].fields
        if METADATA_CONSUMER in fields:
            consumer = fields[METADATA_CONSUMER].string_value
        if METADATA_PLAN in fields:
            plan = fields[METADATA_PLAN].string_value
    weight = 1.0
    tags = common.custom_tags
    if SAMPLE_TAG in tags:
        weight = 100.0 / float(tags[SAMPLE_TAG])
    flags = ""
    if common.HasField("response_flags"):
        flags = ",".join(
            _FLAGS.get(field.name, field.name) for field, _ in common.response_flags.ListFields()
        )
    if common.HasField("duration"):
        duration_ms = _ms(common.duration)
    else:
        duration_ms = _ms(common.time_to_last_downstream_tx_byte)
    upstream_ms = None
    if common.HasField("time_to_last_upstream_rx_byte"):
        upstream_ms = max(
            _ms(common.time_to_last_upstream_rx_byte) - _ms(common.time_to_first_upstream_tx_byte), 0.0
        )
    request, response = entry.request, entry.response
    aggregator.record(
        now,
        gateway=gateway,
        route=common.route_name,
        consumer=consumer,
        plan=plan,
        method=_METHODS.get(request.request_method, "OTHER"),
        status=response.response_code.value,
        flags=flags,
        duration_ms=duration_ms,
        upstream_ms=upstream_ms,
        bytes_in=request.request_headers_bytes + request.request_body_bytes,
        bytes_out=response.response_headers_bytes + response.response_body_bytes,
        weight=weight,
    )


async def start_collector(aggregator: Aggregator, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ]
    )
    Collector(aggregator).add_to(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound
