"""Small constructors shared by the builders: durations, Any, config sources."""

from __future__ import annotations

from envoy.config.core.v3 import config_source_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import any_pb2, duration_pb2, message

__all__ = ["ads_source", "duration", "pack", "percent"]


def duration(millis: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=millis // 1000, nanos=(millis % 1000) * 1_000_000)


def pack(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)
    return packed


def ads_source() -> config_source_pb2.ConfigSource:
    """Fetch a dependent resource (RDS, EDS, SDS) over the same ADS stream as its parent."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(),
        resource_api_version=config_source_pb2.ApiVersion.V3,
    )


def percent(value: float) -> percent_pb2.FractionalPercent:
    """A policy percentage (0-100, fractional) at Envoy's finest resolution, per million."""
    return percent_pb2.FractionalPercent(
        numerator=round(value * 10_000), denominator=percent_pb2.FractionalPercent.MILLION
    )
