"""Slow-client protection on every gateway: timeouts with safe defaults (GatewayLimits).

A slowloris client opens connections and trickles header bytes to hold them; Envoy's defaults
never time out request headers. Every gateway gets ``request_headers_timeout`` (default 10s) and
an explicit ``stream_idle_timeout`` (default 5m), whether or not it has a ``limits`` block; routes
that need longer silence (WebSocket) raise their own idle timeout.
"""

from __future__ import annotations

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from waypost.policies.model import Gateway, GatewayLimits
from waypost.xds.compiler.pb import duration

__all__ = ["patch_hcm_slow_clients"]

_DEFAULTS = GatewayLimits()


def patch_hcm_slow_clients(gateway: Gateway, hcm: hcm_pb2.HttpConnectionManager) -> None:
    limits = gateway.limits or _DEFAULTS
    hcm.request_headers_timeout.CopyFrom(duration(limits.request_headers_timeout))
    hcm.stream_idle_timeout.CopyFrom(duration(limits.stream_idle_timeout))
